"""The config schema: every field with its default, and the checks that need no other module.

Recipes in configs/ start from `default_config()` and override what their paper says.
This module imports nothing else of xlm_jax (it is the bottom of the layers,
docs/architecture.md): a section with code behind it (data sources, objectives,
evaluators, plan targets) is checked by that code, and xlm_jax/modes/prepare.validate runs
every check before anything is read or compiled, so a typo in `--config.model.dtype=bf16`
fails in a second with the allowed values, not an hour later inside XLA.

Why one file: the schema reads as one page, every field beside its default and comment (the
CLI's error for an unknown field points here), and its checks sit under it.
"""
import ml_collections

from xlm_jax.errors import ConfigError

DTYPES = ("float32", "bfloat16")
REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable")
ATTENTIONS = ("xla", "cudnn", "splash")   # model.attention: xlm_jax/models/attention.py
FUSED_ATTENTIONS = ("cudnn", "splash")    # kernels without attention dropout
SCHEDULES = ("linear", "polynomial", "constant", "inverse_sqrt")
RULE_PRESETS = ("dp", "fsdp", "fsdp_tp")
SAMPLING_UNITS = ("sentences", "tokens")
PACKINGS = ("stream", "lines")
MODES = ("train", "evaluate", "export_hf", "train_tokenizer", "plan", "study")
TOKENIZERS = ("unigram", "bpe", "bytes")   # SentencePiece unigram (XLM-R), SentencePiece BPE, UTF-8 bytes
BYTE_VOCAB_SIZE = 261                      # data.tokenizer="bytes": xlm_jax.data.tokenizers.ByteTokenizer


def default_config() -> ml_collections.ConfigDict:
    """Every field xlm_jax reads, with defaults that run anywhere."""
    c = ml_collections.ConfigDict()
    c.init_from = ""                 # "hf:DIR": start from a transformers XLM-R or BERT directory

    c.model = m = ml_collections.ConfigDict()
    m.num_layers = 2
    m.hidden_size = 128
    m.num_heads = 2
    m.mlp_dim = 512
    m.vocab_size = 8002          # incl. the 4 fairseq specials and <mask>
    m.vocab_pad_multiple = 128   # word-embedding rows and MLM logits padded to a multiple of this: `vocab` shards
    m.max_len = 512              # tokens; position table has max_len + pad_token_id + 1 rows
    m.type_vocab_size = 1        # XLM-R: 1, BERT: 2
    m.num_languages = 0          # > 0 adds XLM-style language embeddings (off for XLM-R)
    m.language_specific_layers = 0   # the bottom k layers get one copy per language (needs num_languages);
                                 # the top num_layers - k stay shared (Wu, Conneau et al. 2020)
    m.language_specific_positions = False   # True: a position table per language (needs num_languages;
                                 # Dufter & Schuetze 2020's "lang-pos")
    m.position_offset = 2        # fairseq: positions start at pad_token_id + 1; BERT: 0
    m.pooler = False             # BERT-style pooler (dense + tanh on the first token); kept, not trained, by MLM
    m.pad_token_id = 1
    m.layer_norm_eps = 1e-5
    m.dropout_rate = 0.1
    m.attention_dropout_rate = 0.1
    m.initializer_range = 0.02
    m.dtype = "float32"          # compute dtype; params are always float32
    m.remat = "none"
    m.attention = "xla"          # "xla" anywhere; "cudnn" (GPU, bfloat16) and "splash" (TPU) are fused
                                 # kernels without attention dropout: they need attention_dropout_rate = 0

    c.data = d = ml_collections.ConfigDict()
    d.corpus_dir = ""            # dir of <lang>.txt[.gz], <src>-<tgt>.tsv[.gz]; all sources "" = gettext catalogs
    d.files = ""                 # "en:/d/en/*.txt.gz,/x/en2.txt;en-de:/d/en-de.tsv": files/globs per language
    d.synthetic_pairs = ""       # "en-sw:/bt/en-sw.tsv[,...];en-yo:...": synthetic (back-translated) pairs, a source
                                 # of their own for the TLM and pair streams, never MLM text (xlm_jax/data/synthetic.py)
    d.synthetic_ratio = 0.0      # a language pair's share of synthetic examples when it has both kinds, in [0, 1);
                                 # 0 = in proportion to their size
    d.synthetic_weight = 1.0     # each synthetic example's weight in the TLM and XLCo losses, in (0, 1]
    d.prepared_corpus = ""       # a dir written by `python -m xlm_jax.data.tfds_builder` (may be gs://)
    d.tfds_datasets = ""         # "wiki40b/en,sw=c4/multilingual@sw": [<lang>=]<name>[@<split>], never downloaded
    d.tfds_data_dir = ""         # where those were prepared (may be gs://); "" = TFDS's default
    d.tfds_split = "train"
    d.tfds_text_key = "text"
    d.on_bad_line = "error"      # undecodable / over-long lines, bad TSV rows: "error" or "skip" (counted, logged)
    d.max_line_chars = 100_000   # longer lines are bad lines (0 = no limit)
    d.shards = 0                 # S virtual shards of the corpus; row j of a global batch is shard j * S // batch,
                                 # each process reads its rows' shards; 0 = train.batch_size (one per row)
    d.alpha = 0.3                # temperature sampling exponent (XLM-R): q_i ~ n_i^alpha
    d.sampling_unit = "sentences"  # n_i counts "sentences" or "tokens" (of the packed training text)
    d.language_caps = ""         # "en:0.2,...": max q_i per language; the others share the rest
    d.language_floors = ""       # "sw:0.01,...": min q_i per language, likewise
    d.seq_len = 128
    d.packing = "stream"         # MLM blocks: "stream" (XLM-R: text runs on across lines) or "lines" (one line each)
    d.mask_prob = 0.15
    d.mask_token_prob = 0.8      # of the chosen tokens: 80% <mask>,
    d.random_token_prob = 0.1    # 10% a random token, the rest unchanged
    d.random_token_language = "same"   # with language_id_ranges, a random token is of the replaced token's
                                 # language ("same") or of any language ("any": Dufter & Schuetze 2020)
    d.whole_word_mask = False    # choose whole words ('▁' starts; fairseq --mask-whole-words), 80/10/10 per word
    d.mask_sample_alpha = 0.0    # > 0: choose tokens with weight count^-alpha (XLM --sample_alpha); 0 = uniform
    d.languages = ""             # "en,de,fr": train on these languages of the sources only ("" = all);
                                 # pairs are kept when both sides are
    d.min_languages = 2
    d.max_sentences_per_language = 0   # 0 = no cap
    d.eval_sentences_per_language = 200
    d.eval_batches = 2
    d.eval_languages = ""        # comma-separated languages to evaluate; "" = all with held-out text,
    d.max_eval_languages = 0     # or at most this many, spread from the largest to the smallest (0 = all)
    d.tokenizer = "unigram"      # what a run from scratch trains: "unigram", "bpe" or "bytes" (261 ids)
    d.language_id_ranges = False  # True: no shared vocabulary (Wu, Conneau et al. 2020): each language's text gets
                                 # ids of its own (the specials stay shared), model.vocab_size = 5 + L x P with P
                                 # the ids per language (bytes: 256); runs from scratch only
    d.shared_specials = True     # with language_id_ranges, False: each language its own <s> </s> <unk> <mask>
                                 # (<pad> stays shared), model.vocab_size = 1 + L x (P + 4)
    d.tokenizer_sentences = 300_000    # SentencePiece input_sentence_size
    d.character_coverage = 0.9995
    d.byte_fallback = True
    d.extend_vocab_pieces = 0    # with init_from: > 0 appends the new pieces of a unigram model of
                                 # this many pieces trained on the corpus to the imported vocabulary
    d.extend_vocab_languages = ""   # "sw" or "yo,sw": train that model on these languages' text only
                                    # (default: every language, mixed as tokenizer training mixes them)

    c.train = t = ml_collections.ConfigDict()
    t.num_steps = 1000
    t.batch_size = 32
    t.grad_accum_steps = 1
    t.learning_rate = 5e-4
    t.end_learning_rate = 0.0
    t.warmup_steps = 100
    t.schedule = "linear"
    t.power = 1.0                # polynomial decay exponent (fairseq: 1.0 = linear)
    t.b1 = 0.9
    t.b2 = 0.98
    t.eps = 1e-6
    t.weight_decay = 0.01
    t.clip_norm = 1.0            # 0 = no clipping
    t.skip_nonfinite = False      # True: skip a non-finite update and go on, instead of stopping
    t.max_consecutive_skips = 10  # with skip_nonfinite: stop once this many updates in a row were skipped
    t.seed = 0
    t.log_every = 50
    t.check_memory = True         # stop at once when even a lower bound of the step's memory exceeds a device's
    t.steps_per_call = 1         # updates per jitted call (scanned over stacked batches); logs, evals and
                                 # checkpoints come between calls, so their intervals must be multiples of it

    # Evaluators by name (xlm_jax/evaluation): kind, every_steps (0 = only in --mode=evaluate and
    # the notebook), random_init_baseline, and the kind's own options. Held-out MLM loss on the
    # pretraining corpus runs during training; recipes add retrieval, XNLI, POS, ...
    c.evals = ml_collections.ConfigDict()
    c.evals.mlm = {"kind": "mlm", "every_steps": 500, "random_init_baseline": True}

    # Pretraining objectives (xlm_jax/objectives): objectives.<name> is a weight (0 = off), the
    # section <name> its options (batch_size 0 = train.batch_size; each objective checks its own),
    # objective_schedule how they mix ("sum": one batch of each per update, InfoXLM; "alternate":
    # one objective per update, XLM).
    c.objectives = ml_collections.ConfigDict(
        {"mlm": 1.0, "tlm": 0.0, "xlco": 0.0, "adversarial": 0.0, "pair_classification": 0.0})
    c.objective_schedule = "sum"
    c.mlm = ml_collections.ConfigDict({"batch_size": 0})
    c.tlm = ml_collections.ConfigDict({
        "batch_size": 0,
        "positions": "continuous",    # "continuous" (InfoXLM) or "reset" (XLM): the second sentence's positions
    })
    c.xlco = ml_collections.ConfigDict({
        "batch_size": 0,
        "layer": 0,                   # the layer whose states are contrasted; 0 = two thirds of the depth
        "pooling": "cls",             # "cls" (InfoXLM) or "mean" (the masked mean retrieval scores)
        "key_encoder": "momentum",    # "momentum" (InfoXLM: a copy and a queue) or "shared" (LaBSE: in-batch)
        "momentum": 0.9999,
        "queue_size": 131_072,        # momentum encoder's queue of negatives (0 = none)
        "temperature": 0.25,
        "margin": 0.0,                # LaBSE's additive margin (needs normalize)
        "projection": False,          # a trained projection head on the pooled vector
        "normalize": False,           # cosine instead of dot-product scores
        "batch_negatives": False,     # momentum encoder: the batch's other keys are negatives too
        "collapse_std": 0.05,         # warn when the sentence vectors' spread falls below this
    })
    c.adversarial = ml_collections.ConfigDict({
        "batch_size": 0,
        "share_batch": True,          # read MLM's batch (one forward pass), or a batch of its own
        "layer": 0,                   # the layer the discriminator reads; 0 = the last
        "pooling": "mean",
        "hidden": 0,                  # the discriminator's hidden size; 0 = model.hidden_size
        "lambda_max": 1.0,            # gradient reversal's scale at the end of its schedule
        "lambda_schedule": "dann",
    })
    c.pair_classification = ml_collections.ConfigDict({
        "batch_size": 0,
        "negative_fraction": 0.5,     # pairs whose second sentence is another pair's
    })

    c.checkpoint = k = ml_collections.ConfigDict()
    k.every_steps = 500
    k.keep = 3
    k.async_save = True

    c.mesh = ms = ml_collections.ConfigDict()
    ms.data = -1
    ms.fsdp = 1
    ms.tensor = 1
    ms.rules = "fsdp"

    # --mode=plan: compile the train step for a target without its hardware (xlm_jax/plan):
    # a Cloud TPU slice ("v5p-128", "v4-32", "v5e-256", "v6e-64") or GPUs ("8xH100", "16xH200");
    # "" = this machine's own devices.
    c.plan = p = ml_collections.ConfigDict()
    p.target = ""
    return c


def sibling_config(path: str, name: str) -> ml_collections.ConfigDict:
    """get_config() of the recipe `name`.py beside the recipe at `path` (a variant's base),
    wherever the command runs from."""
    import importlib.util
    import os
    file = os.path.join(os.path.dirname(os.path.abspath(path)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"xlm_jax_recipe_{name}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def with_defaults(loaded: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A run's saved config with the fields it predates filled in from default_config()
    (e.g. `evals`, for a run written before evaluators existed)."""
    complete = default_config()
    for name, value in loaded.items():
        if isinstance(value, ml_collections.ConfigDict) and name in complete and name != "evals":
            for field, field_value in value.items():
                complete[name][field] = field_value
        else:
            complete[name] = value
    return complete


def require(ok: bool, field: str, message: str) -> None:
    """ConfigError naming `field` unless ok: every check of every section says it this way."""
    if not ok:
        raise ConfigError(f"config field `{field}`: {message}")


def one_of(config, field: str, allowed) -> None:
    """`section.name` of config is one of `allowed`, else ConfigError listing them."""
    section, name = field.split(".")
    value = config[section][name]
    require(value in allowed, field, f"got {value!r}; allowed values: {', '.join(map(str, allowed))}")


def _positive(config, field: str, allow_zero: bool = False) -> None:
    section, name = field.split(".")
    value = config[section][name]
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    bound_ok = numeric and (value >= 0 if allow_zero else value > 0)
    require(bound_ok, field,
             f"got {value!r}; must be a {'non-negative' if allow_zero else 'positive'} number")


def check_attention_dropout(m: ml_collections.ConfigDict) -> None:
    """The fused attention kernels never materialize the probabilities, so they cannot drop any:
    refuse a rate they would silently ignore (also checked where the model runs)."""
    require(m.attention not in FUSED_ATTENTIONS or m.attention_dropout_rate == 0, "model.attention_dropout_rate",
             f"got {m.attention_dropout_rate}, but model.attention={m.attention!r} is a fused kernel without "
             "attention dropout; set --config.model.attention_dropout_rate=0 (as recent recipes do; hidden "
             "dropout stays) or keep --config.model.attention=xla")


def check_language_specific_layers(config: ml_collections.ConfigDict) -> None:
    """model.language_specific_layers: k of the num_layers layers, routed by the language ids that
    only a model with language embeddings (num_languages > 0) is fed; not on an imported model,
    whose layers transformers has one copy of."""
    m, k = config.model, config.model.language_specific_layers
    require(type(k) is int and 0 <= k <= m.num_layers, "model.language_specific_layers",
             f"got {k!r}; the number of bottom layers with a copy per language, 0..{m.num_layers} "
             "(model.num_layers)")
    require(not k or m.num_languages > 0, "model.language_specific_layers",
             f"got {k}, but model.num_languages=0: per-language layers are chosen by the language ids a "
             "model with language embeddings reads; set --config.model.num_languages to the corpus's "
             "number of languages, or language_specific_layers=0")
    require(not k or not config.init_from, "model.language_specific_layers",
             f"got {k} with init_from={config.init_from!r}: a transformers model has one copy of each layer; "
             "start from scratch, or set language_specific_layers=0")


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The schema's own checks: every field present, types, ranges and the fields that constrain
    each other; raises ConfigError naming the first bad one. The sections with code of their own
    (data sources, objectives, evaluators, plan targets) are checked by that code:
    xlm_jax/modes/prepare.validate runs this and them, once, before a run starts."""
    expected = default_config()
    sections = [name for name in expected if isinstance(expected[name], ml_collections.ConfigDict)
                and name not in ("evals", "objectives")]   # any names there; their registries check them
    require(isinstance(config.get("init_from"), str), "init_from", "field is missing or not a string")
    require(config.init_from == "" or config.init_from.startswith("hf:"), "init_from",
             f"got {config.init_from!r}; use \"hf:DIR\" (a transformers XLM-R or BERT directory) or \"\"")
    for section in sections:
        require(section in config, section, "section is missing (start from xlm_jax.config.default_config())")
        for name in expected[section]:
            require(name in config[section], f"{section}.{name}", "field is missing")
            require(config[section][name] is not None, f"{section}.{name}",
                     f"is None; set a {type(expected[section][name]).__name__} "
                     f"(default {expected[section][name]!r})")

    m, d, t = config.model, config.data, config.train
    one_of(config, "model.dtype", DTYPES)
    one_of(config, "model.remat", REMAT_POLICIES)
    one_of(config, "model.attention", ATTENTIONS)
    require(m.attention != "cudnn" or m.dtype == "bfloat16", "model.dtype",
             f"got {m.dtype!r}, but model.attention=\"cudnn\" (cuDNN flash attention) takes only 16-bit inputs; "
             "set --config.model.dtype=bfloat16 or --config.model.attention=xla")
    one_of(config, "train.schedule", SCHEDULES)
    one_of(config, "mesh.rules", RULE_PRESETS)
    one_of(config, "data.sampling_unit", SAMPLING_UNITS)
    one_of(config, "data.packing", PACKINGS)
    one_of(config, "data.tokenizer", TOKENIZERS)
    for field in ("model.num_layers", "model.hidden_size", "model.num_heads", "model.mlp_dim",
                  "model.vocab_size", "model.max_len", "model.type_vocab_size", "data.seq_len",
                  "train.num_steps", "train.batch_size", "train.grad_accum_steps",
                  "train.log_every", "train.max_consecutive_skips",
                  "checkpoint.every_steps", "checkpoint.keep",
                  "data.tokenizer_sentences", "data.min_languages", "data.eval_batches"):
        _positive(config, field)
    for field in ("train.learning_rate", "train.warmup_steps", "train.weight_decay", "train.clip_norm",
                  "model.num_languages", "data.max_sentences_per_language",
                  "data.eval_sentences_per_language", "data.max_eval_languages", "data.extend_vocab_pieces",
                  "data.max_line_chars", "data.shards",
                  "model.dropout_rate",
                  "model.attention_dropout_rate", "data.alpha"):
        _positive(config, field, allow_zero=True)
    check_attention_dropout(m)
    check_language_specific_layers(config)
    require(isinstance(m.language_specific_positions, bool), "model.language_specific_positions",
             f"got {m.language_specific_positions!r}; must be True or False")
    require(not m.language_specific_positions or m.num_languages > 0, "model.language_specific_positions",
             "got True, but model.num_languages=0: a token's position table is chosen by the language ids a "
             "model with language embeddings reads; set --config.model.num_languages to the corpus's number "
             "of languages, or language_specific_positions=False")
    require(not m.language_specific_positions or not config.init_from, "model.language_specific_positions",
             f"got True with init_from={config.init_from!r}: a transformers model has one position table; start "
             "from scratch, or set language_specific_positions=False")

    require(m.hidden_size % m.num_heads == 0, "model.num_heads",
             f"hidden_size {m.hidden_size} is not divisible by num_heads {m.num_heads}")
    head_dim = m.hidden_size // m.num_heads
    require(m.attention != "cudnn" or (head_dim % 8 == 0 and head_dim <= 256), "model.num_heads",
             f"head_dim = hidden_size / num_heads = {head_dim}, but cuDNN flash attention needs a multiple of 8, "
             "at most 256 (128 before Hopper); change num_heads or use --config.model.attention=xla")
    require(isinstance(m.pooler, bool), "model.pooler", f"got {m.pooler!r}; must be True or False")
    require(m.position_offset in (0, m.pad_token_id + 1), "model.position_offset",
             f"got {m.position_offset}; use {m.pad_token_id + 1} (fairseq/XLM-R positions after "
             f"pad_token_id={m.pad_token_id}) or 0 (BERT positions from 0)")
    require(m.vocab_size >= 8, "model.vocab_size", f"got {m.vocab_size}; need room for the 5 special tokens")
    require(type(m.vocab_pad_multiple) is int and m.vocab_pad_multiple > 0, "model.vocab_pad_multiple",
             f"got {m.vocab_pad_multiple!r}; must be a positive int (1 = no padding)")
    require(d.tokenizer != "bytes" or config.init_from or d.language_id_ranges or m.vocab_size == BYTE_VOCAB_SIZE,
             "model.vocab_size",
             f"got {m.vocab_size}, but data.tokenizer=\"bytes\" has {BYTE_VOCAB_SIZE} ids (4 specials, 256 "
             f"bytes, <mask>); set --config.model.vocab_size={BYTE_VOCAB_SIZE}")
    require(d.seq_len >= 8, "data.seq_len", f"got {d.seq_len}; a packed block needs at least 8 tokens")
    require(d.seq_len <= m.max_len, "data.seq_len",
             f"got {d.seq_len}, longer than model.max_len={m.max_len}")
    require(0 < d.mask_prob < 1, "data.mask_prob", f"got {d.mask_prob}; must be in (0, 1)")
    require(0 <= d.mask_token_prob and 0 <= d.random_token_prob
             and d.mask_token_prob + d.random_token_prob <= 1, "data.random_token_prob",
             "mask_token_prob + random_token_prob must lie in [0, 1]")
    require(isinstance(t.check_memory, bool), "train.check_memory",
             f"got {t.check_memory!r}; must be True or False")
    require(isinstance(d.whole_word_mask, bool), "data.whole_word_mask",
             f"got {d.whole_word_mask!r}; must be True or False")
    require(isinstance(d.mask_sample_alpha, (int, float)) and d.mask_sample_alpha >= 0, "data.mask_sample_alpha",
             f"got {d.mask_sample_alpha!r}; must be >= 0 (0 = uniform choice)")
    require(not (d.whole_word_mask and d.mask_sample_alpha), "data.mask_sample_alpha",
             "frequency-weighted choice cannot be combined with data.whole_word_mask=True; set one of them")
    require(0 < d.character_coverage <= 1, "data.character_coverage", "must be in (0, 1]")
    for beta in ("b1", "b2"):
        require(isinstance(t[beta], (int, float)) and 0 <= t[beta] < 1, f"train.{beta}",
                 f"got {t[beta]!r}; Adam betas must be in [0, 1)")
    require(isinstance(d.shards, int) and (not d.shards or t.batch_size % d.shards == 0), "data.shards",
             f"got {d.shards!r}; the shards must divide train.batch_size={t.batch_size} (0 = one per row); "
             f"use one of {', '.join(str(s) for s in range(1, t.batch_size + 1) if t.batch_size % s == 0)}")
    require(t.batch_size % t.grad_accum_steps == 0, "train.grad_accum_steps",
             f"batch_size {t.batch_size} is not divisible by grad_accum_steps {t.grad_accum_steps}")
    require(t.warmup_steps <= t.num_steps, "train.warmup_steps",
             f"got {t.warmup_steps}, more than train.num_steps={t.num_steps}")
    for axis in ("data", "fsdp", "tensor"):
        size = config.mesh[axis]
        require(isinstance(size, int) and (size == -1 or size >= 1), f"mesh.{axis}",
                 f"got {size!r}; must be a positive int or -1 (all remaining devices)")
    require([config.mesh[a] for a in ("data", "fsdp", "tensor")].count(-1) <= 1, "mesh",
             "at most one of mesh.data, mesh.fsdp, mesh.tensor may be -1")
    require(isinstance(config.get("evals"), ml_collections.ConfigDict), "evals",
             "section is missing (start from xlm_jax.config.default_config())")
    require(isinstance(config.get("objectives"), ml_collections.ConfigDict), "objectives",
             "section is missing (start from xlm_jax.config.default_config())")
    _check_steps_per_call(config)
    return config


def _multiples_near(value: int, k: int) -> str:
    below = value // k * k
    return f"{below} or {below + k}" if below else f"{k}"


def _check_steps_per_call(config) -> None:
    """Logs, evals, checkpoints and the run's end fall between calls of train.steps_per_call updates."""
    k = config.train.steps_per_call
    require(type(k) is int and k >= 1, "train.steps_per_call", f"got {k!r}; must be a positive int (1 = one "
             "update per call)")
    if k == 1:
        return
    require(config.objective_schedule == "sum", "train.steps_per_call",
             f"got {k}, but objective_schedule={config.objective_schedule!r} gives each update another "
             "objective's batch, so consecutive updates are different programs and one call cannot scan them; "
             "use steps_per_call=1 with \"alternate\", or objective_schedule=\"sum\"")
    intervals = {"train.num_steps": config.train.num_steps, "train.log_every": config.train.log_every,
                 "checkpoint.every_steps": config.checkpoint.every_steps}
    for name, entry in config.evals.items():
        if entry.get("every_steps"):
            intervals[f"evals.{name}.every_steps"] = entry["every_steps"]
    for field, value in intervals.items():
        require(value % k == 0, field, f"got {value}, not a multiple of train.steps_per_call={k} (logs, evals, "
                 f"checkpoints and the end of the run fall between calls of {k} updates); use "
                 f"{_multiples_near(value, k)}")
