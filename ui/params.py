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
WEIGHTS = "weights"  # "aligned" | "random": how the projection weights are drawn

# --- linked query detail
QUERY = "query"

# --- compare page
SELECTORS = "selectors"  # the selectors compared: a list, a repeated URL parameter
SELECTOR_A = "a"  # the pair of the diff map and the worst-queries table
SELECTOR_B = "b"
DIFF_HEAD = "diff_head"
WORST_BY = "worst_by"  # the metric that ranks the worst queries
# A raw-space strategy, the exact per-head top-k and a baseline; the first two are the default
# pair, so the worst queries and the detail are cosine's, measured against dot's exact choice.
DEFAULT_SELECTORS = ("cosine", "dot", "random")
WORST_METRICS = ("attention_mass", "recall_at_k", "output_rel_error")

# --- performance page (not in the URL: a sweep is run on demand, not part of a shared view)
PERF_SIZES = "perf_sizes"
PERF_SELECTORS = "perf_selectors"
PERF_REPEATS = "perf_repeats"
PERF_RUN = "perf_run"
PERF_SIZE_OPTIONS = (1_024, 2_048, 4_096, 8_192, 16_384, 32_768, 65_536)
DEFAULT_PERF_SIZES = (1_024, 4_096, 16_384)  # a few seconds in all on a 2-core CPU
DEFAULT_PERF_SELECTORS = ("cosine", "ann", "dot")  # the first two available are preselected
DEFAULT_PERF_REPEATS = 3

# --- learn page: its own widget keys, so the tiny example's defaults never mix with the
# playground's; `ui.url_state` maps them to the plain URL names (/learn?k=3&step=top_k).
LEARN_PRESET = "learn_preset"  # URL `preset`: "tiny" or a sdattn.walkthrough.BREAK_IT_PRESETS key
LEARN_STEP = "learn_step"  # URL `step`
LEARN_ALL_STEPS = "learn_all_steps"
LEARN_DATA_SEED = "learn_data_seed"  # URL `data_seed`
LEARN_TOP_K = "learn_k"  # URL `k`
LEARN_SELECTOR = "learn_selector"  # URL `selector`
LEARN_WEIGHTS = "learn_weights"  # URL `weights`
LEARN_SEED = "learn_seed"  # URL `seed`
LEARN_QUERY = "learn_query"  # URL `query`
# The keys of sdattn.walkthrough's steps, in order (a test checks they match).
LEARN_STEPS = ("query", "projections", "scores", "top_k", "softmax", "weighted_sum", "output")

# --- figure export (not in the URL: a preference, not part of the view)
IMAGE_FORMAT = "image_format"
IMAGE_FORMATS = ("png", "svg")  # what Plotly's camera button can export client side

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
WEIGHT_KINDS = ("aligned", "random")  # sdattn.weights.WEIGHT_KINDS
WEIGHT_LABELS = {"aligned": "Aligned", "random": "Random", "layer": "From your layer",
                 "demo": "Trained demo layer"}
# Trained weights, offered only when there is such a layer: the one an uploaded session or model
# brought ("layer", a URL cannot carry it) and the shipped demo session ("demo").
LAYER_WEIGHT_KINDS = ("layer", "demo")
# Aligned: scores follow query-key similarity with a spread of about 2, so attention is peaked
# and selectors differ; random Glorot projections give scores of about ±0.05, a flat softmax.
DEFAULT_WEIGHTS = "aligned"
MAX_TOP_K = 256  # slider range; the layer itself takes k = min(top_k, N)

# Generator parameters the app exposes as widgets are those with int defaults up to this value:
# larger ones (vocabulary sizes, benchmark dims) would make sliders unusable.
MAX_GENERATOR_PARAM = 4096


def generator_param_key(kind: str, name: str) -> str:
    """Widget key of one generator parameter, e.g. `bag_of_words.num_queries`."""
    return f"{kind}.{name}"

# --- playground zoom: (first, last) query and key shown by both views (not in the URL)
VIEW_QUERIES = "view_queries"
VIEW_KEYS = "view_keys"
