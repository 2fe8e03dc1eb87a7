"""Shared Streamlit code for the sdattn app: cached runners, widgets and views for every page.
The only non-page code importing streamlit: params, runner, widgets, views, detail, export."""
