"""Widget keys, defaults and option lists shared by every page of the app.
Each key is also its future URL parameter (`st.query_params`): short, stable, int or str."""

# --- input panel
SOURCE = "source"  # "generate" | "upload"
KIND = "kind"
DATA_SEED = "data_seed"
UPLOAD = "upload"  # never goes into the URL: uploaded data stays in the session
ITEM = "item"  # batch item shown

# --- model controls
TOP_K = "k"
HEADS = "heads"
KEY_DIM = "key_dim"
SELECTOR = "selector"
SEED = "seed"  # weights and the random selector

# --- linked query detail
QUERY = "query"

SOURCES = ("generate", "upload")
SOURCE_LABELS = {"generate": "Generate", "upload": "Upload a file"}

DEFAULT_KIND = "bag_of_words"  # words as axis labels make the first view self-explanatory
# config_p is the benchmark's data set (issue 6): thousands of keys, too big to draw.
HIDDEN_KINDS = ("config_p",)

DEFAULT_TOP_K = 4  # a sparse, readable first picture at the generators' default N (32-64)
HEAD_OPTIONS = (1, 2, 4, 8)
DEFAULT_HEADS = 4
KEY_DIM_OPTIONS = (4, 8, 16, 32, 64)
DEFAULT_KEY_DIM = 16
DEFAULT_SELECTOR = "dot"
DEFAULT_SEED = 0
MAX_TOP_K = 256  # slider range; the layer itself takes k = min(top_k, N)

# Generator parameters the app exposes as widgets are those with int defaults up to this value:
# larger ones (vocabulary sizes, benchmark dims) would make sliders unusable.
MAX_GENERATOR_PARAM = 4096


def generator_param_key(kind: str, name: str) -> str:
    """Widget key of one generator parameter, e.g. `bag_of_words.num_queries`."""
    return f"{kind}.{name}"
