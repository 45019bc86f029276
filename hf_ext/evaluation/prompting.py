"""Recipe-side lm-eval helpers: `--eval_tasks`/`--eval_fewshot` checked before any work, and evaluation with a
prompt prefix placed once in front of every prompt (MeCo's conditional inference: `"URL: en.wikipedia.org\\n\\n"`
before the few-shot examples and the question)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

from ..utils.evaluation import keeping_train_mode
from .harness import (
    _PACKAGED,
    DEFAULT_TASKS,
    _as_lm,
    _check_lm_args,
    _check_run_args,
    run_numbers,
    seed_int,
    task_manager,
)

#: Document field that carries a per-document prefix (see [`evaluate_with_prefix`]).
PREFIX_FIELD = "hf_ext_prompt_prefix"


def check_eval_tasks(
    text: str | None,
    flag: str = "--eval_tasks",
    metric: str | None = None,
    require_fields: Sequence[str] = (),
    include_path: str | Sequence[str] | None = None,
    prefixed: bool = False,
) -> list[str] | None:
    """Parse and check a comma-separated list of lm-eval task names before a recipe does any work.

    Checks that lm-eval is installed, that every name is a task, group or tag lm-eval knows (the packaged tasks plus
    lm-eval's own; indexing those takes several seconds, so it only happens when a name is not an `hf_ext*` one) and,
    when `metric`, `require_fields` or `prefixed` are given, loads the tasks to check that each reports `metric`, that
    its test documents carry `require_fields` (e.g. a `url` for URL-conditioned prompts) and, with `prefixed` (the
    recipe evaluates with a prompt prefix, see [`evaluate_with_prefix`]), that none is a `loglikelihood_rolling` task,
    whose requests lm-eval builds from the document's text alone, so the prefix would not be in them.

    Returns:
        `list[str]` of task names, or `None` when `text` is `None` (evaluation off).

    Raises:
        `ValueError` naming `flag` and the fix.
    """
    if text is None:
        return None
    names = [t.strip() for t in str(text).split(",")]
    if not names or not all(names):
        raise ValueError(
            f"{flag} must be comma-separated lm-eval task names such as 'hf_ext_cloze,hf_ext_domain', got {text!r}."
        )
    if len(set(names)) != len(names):
        raise ValueError(f"{flag} names a task twice: {text!r}.")
    try:
        import lm_eval  # noqa: F401
    except ImportError as err:
        raise ValueError(f"{flag} needs lm-evaluation-harness: pip install 'hf_ext[eval]'.") from err
    tm = task_manager(include_path, include_defaults=False)  # the packaged tasks only: fast
    packaged = sorted(tm.task_index)  # hf_ext's tasks, groups and tags, with those under include_path
    unknown = [n for n in names if n not in tm.task_index]
    if unknown and not any(n.startswith("hf_ext") for n in unknown):  # hf_ext_* names can only be packaged ones
        tm = task_manager(include_path, include_defaults=True)
        unknown = [n for n in names if n not in tm.task_index]
    if unknown:
        import difflib

        close = sorted({m for n in unknown for m in difflib.get_close_matches(n, list(tm.task_index), n=3)})
        raise ValueError(
            f"{flag}: unknown lm-eval task(s) {unknown}"
            + (f" (did you mean {', '.join(map(repr, close))}?)" if close else "")
            + f"; the packaged offline tasks and groups are {packaged} (see docs/evaluation.md), lm-eval's own are "
            "listed by `lm_eval ls tasks`."
        )
    if metric is not None or require_fields or prefixed:
        try:
            loaded = tm.load(names)["tasks"]
        except Exception as err:  # lm-eval raises many kinds (missing data, no network)
            raise ValueError(f"{flag}: lm-eval could not load {names}: {err}") from err
        if metric is not None:
            check_reported_metric(loaded, metric, flag, "pick the metric with --eval_metric")
        rolling = [n for n, t in loaded.items() if getattr(t, "OUTPUT_TYPE", None) == "loglikelihood_rolling"]
        if prefixed and rolling:
            raise ValueError(
                f"{flag}: task(s) {rolling} are loglikelihood_rolling tasks, whose requests lm-eval builds from the "
                "document's text alone (no description), so the prompt prefix would not be in them and the "
                "with-prefix score would be the one without it; drop them from the list."
            )
        for name, task in loaded.items():
            if require_fields:
                docs = task.test_docs() if task.has_test_docs() else task.validation_docs()
                first = docs[0] if docs is not None and len(docs) else {}
                missing = [f for f in require_fields if f not in first]
                if missing:
                    raise ValueError(
                        f"{flag}: the documents of task {name!r} have no {missing} field (fields: {sorted(first)}), "
                        "which the conditioned prompts need; use tasks that carry it (hf_ext_cloze does)."
                    )
    return names


def check_reported_metric(loaded: Mapping, metric: str, flag: str, fix: str) -> None:
    """Refuse `metric` when a loaded lm-eval task (`TaskManager.load(...)["tasks"]`) lists its metrics and `metric`
    (`"acc"`, or lm-eval's key `"acc,none"`) is not one of them: a `ValueError` naming `flag`, the task and `fix`."""
    name_only = metric.partition(",")[0]
    for name, task in loaded.items():
        reported = [m["metric"] for m in task.config.metric_list or [] if isinstance(m.get("metric"), str)]
        if reported and name_only not in reported:
            raise ValueError(f"{flag}: task {name!r} reports {reported}, not {metric!r}; {fix}.")


def parse_shots(text: str | int | None, flag: str = "--eval_fewshot") -> list[int]:
    """`"0,5"` -> `[0, 5]` (non-negative, distinct shot counts)."""
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    try:
        shots = [int(t) for t in str(text).split(",") if t.strip()]
    except ValueError as err:
        raise ValueError(f"{flag} must be comma-separated shot counts like '0,5', got {text!r}.") from err
    if not shots or any(k < 0 for k in shots) or len(set(shots)) != len(shots):
        raise ValueError(f"{flag} must be distinct non-negative shot counts like '0,5', got {text!r}.")
    return shots


def evaluate_with_prefix(
    model,
    tokenizer=None,
    tasks: str | Sequence[str] = DEFAULT_TASKS,
    prefix: str | Callable[[dict], str] = "",
    num_fewshot: int | None = 0,
    limit: int | float | None = None,
    batch_size: int = 8,
    device: str | None = None,
    max_length: int | None = None,
    include_path: str | Sequence[str] | None = None,
    seed: int = 1234,
    metadata: Mapping | None = None,
    encode_prefix_apart: bool = False,
    **kwargs,
) -> dict:
    """Like [`evaluate_model`], with `prefix` placed once in every prompt, before the few-shot examples and the test
    document (lm-eval's task `description`, in front of the task's own description if it has one): at the very start of the prompt, or after what lm-eval puts before the
    description when asked to (a `system_instruction`, a chat template's system turn with `apply_chat_template`).

    Args:
        prefix (`str` or `Callable[[dict], str]`): A string (a Jinja template over the test document's fields, e.g.
            `"URL: {{host}}\\n\\n"`) or a function of the test document. Starting it with the tokenizer's BOS string
            makes lm-eval's `HFLM` encode the prompt as `[BOS] prefix ...` without adding another BOS.
        encode_prefix_apart (`bool`, *optional*, defaults to `False`): Tokenize the prefix and the rest of the prompt
            separately, as metadata-conditioned training encodes a document's metadata prefix and its text (MeCo's
            `URL: host\\n\\n` then the document: a byte-level BPE may merge the prefix's last characters with the
            next ones when the whole prompt is encoded at once). Text that lm-eval puts before the prefix (a
            `system_instruction`, a chat template's header) is tokenized on its own too. Needs lm-eval's `HFLM` (a
            model object or folder).

    A prompt that carries a non-empty prefix, wherever lm-eval put it (also after a `system_instruction` or inside a
    chat template), must fit the model's context whole: lm-eval cuts longer prompts from the left, the prefix (and
    what precedes it) first, and the score would be reported as the with-prefix one. Such a run raises a
    `ValueError` (the prompt's token count, the context `max_length` and the fix: a lower `num_fewshot` or a larger
    `max_length` where the model supports it) when lm-eval tokenizes the requests, before the model scores them.
    The check needs lm-eval's `HFLM` (another `LM` object truncates in its own way and is not checked). lm-eval puts
    no description in `loglikelihood_rolling` requests (they are the document's text alone, scored in rolling windows
    that drop nothing), so a task of that type gets no prefix at all and is refused when `prefix` is not empty.
        Others (`metadata` too, e.g. `{"domains": "filesystem"}`): as in [`evaluate_model`], and checked as there
            (`batch_size` a positive int or `"auto"`, `max_length` a positive int or `None`) before the model is
            wrapped.

    Returns:
        `dict`: lm-eval's results.
    """
    import lm_eval

    tasks = _check_run_args(tasks, num_fewshot, limit, seed)
    seed = seed_int(seed)
    _check_lm_args(batch_size, max_length)  # as evaluate_model: 0, -3 and True ran, a bad max_length failed in lm-eval
    num_fewshot, limit, batch_size, max_length = run_numbers(num_fewshot, limit, batch_size, max_length)
    if not (isinstance(prefix, str) or callable(prefix)):
        raise TypeError(f"prefix must be a string or a callable doc -> str, got {type(prefix)}.")
    from lm_eval.models.huggingface import HFLM

    with keeping_train_mode(model):  # HFLM switches a model object to eval mode
        lm = _as_lm(model, tokenizer, batch_size, device, max_length)
        prefixes: set[str] = set()
        # the prompts that start with a prefix are checked to fit the context (and encoded apart when asked)
        guard = encode_prefix_apart or (isinstance(lm, HFLM) and (callable(prefix) or prefix != ""))
        restore = _encode_prefixes_apart(lm, prefixes, apart=encode_prefix_apart) if guard else None
        try:
            tm, loaded = _prefixed_tasks(tasks, prefix, prefixes, include_path, metadata)
            kwargs.setdefault("bootstrap_iters", 1000)
            kwargs.setdefault("log_samples", False)
            results = lm_eval.simple_evaluate(
                model=lm,
                tasks=loaded,
                num_fewshot=num_fewshot,
                limit=limit,
                task_manager=tm,
                random_seed=seed,
                numpy_random_seed=seed,
                torch_random_seed=seed,
                fewshot_random_seed=seed,
                **kwargs,
            )
        finally:
            if restore is not None:  # an lm-eval LM object passed in gets its own methods back
                restore()
    return dict(results) if results is not None else {}


def check_prefix_fits(
    model,
    tokenizer=None,
    tasks: str | Sequence[str] = DEFAULT_TASKS,
    prefix: str | Callable[[dict], str] = "",
    num_fewshot: int | None = 0,
    limit: int | float | None = None,
    max_length: int | None = None,
    include_path: str | Sequence[str] | None = None,
    seed: int = 1234,
    metadata: Mapping | None = None,
    encode_prefix_apart: bool = False,
    system_instruction: str | None = None,
    apply_chat_template: bool = False,
    fewshot_as_multiturn: bool = False,
) -> None:
    """Raise the `ValueError` that [`evaluate_with_prefix`] with these arguments raises for a prompt longer than the
    model's context or for a `loglikelihood_rolling` task, without scoring anything (nothing when all fits).

    The requests are built as `lm_eval.simple_evaluate` builds them (lm-eval's public `Task` API: the `num_fewshot`
    override, the few-shot seed, `build_all_requests` with the same `limit`) and encoded as lm-eval's `HFLM` encodes
    them before scoring (`tok_encode` of context + continuation, `tok_batch_encode` of a generation prompt with room
    for `max_gen_toks`), through the same wrapped methods that evaluate_with_prefix's check uses: the same token
    counts, the same limits, the same message.

    Args:
        model: As in evaluate_with_prefix (lm-eval's `HFLM` only). Only the model's config is read (the context
            `max_length` that `HFLM` derives from it, its causal/seq2seq backend), so a model built on the meta
            device (`with torch.device("meta"): AutoModelForCausalLM.from_config(config)`) checks the prompts
            before any training. A `tokenizer` passed in is copied: `HFLM` may give it a pad token.
        system_instruction, apply_chat_template, fewshot_as_multiturn: lm-eval's, as passed to evaluate_with_prefix.
        Others: as in evaluate_with_prefix.
    """
    import copy

    tasks = _check_run_args(tasks, num_fewshot, limit, seed)
    seed = seed_int(seed)
    _check_lm_args(1, max_length)
    num_fewshot, limit, max_length = run_numbers(num_fewshot, limit, max_length)
    if not (isinstance(prefix, str) or callable(prefix)):
        raise TypeError(f"prefix must be a string or a callable doc -> str, got {type(prefix)}.")
    if isinstance(prefix, str) and prefix == "":  # evaluate_with_prefix checks nothing either
        return
    from lm_eval.evaluator_utils import get_sample_size
    from lm_eval.models.huggingface import HFLM

    tokenizer = copy.deepcopy(tokenizer) if tokenizer is not None else None
    with keeping_train_mode(model):  # HFLM switches a model object to eval mode
        lm = _as_lm(model, tokenizer, 1, None, max_length)
        if not isinstance(lm, HFLM):
            raise TypeError(f"check_prefix_fits needs lm-eval's HFLM (a model object or a folder), got {type(lm)}.")
        prefixes: set[str] = set()
        restore = _encode_prefixes_apart(lm, prefixes, apart=encode_prefix_apart)
        try:
            _, loaded = _prefixed_tasks(tasks, prefix, prefixes, include_path, metadata)
            for task in loaded:  # as simple_evaluate sets up each task, then evaluate() builds its requests
                if num_fewshot is not None:
                    if task.get_config("num_fewshot") != 0:  # lm-eval keeps a 0 set in a task's config
                        task.set_config(key="num_fewshot", value=num_fewshot)
                elif task.get_config("num_fewshot") is None:
                    task.set_config(key="num_fewshot", value=0)
                task.set_fewshot_seed(seed=seed)
                task.build_all_requests(
                    limit=get_sample_size(task, limit),
                    rank=0,
                    world_size=1,
                    system_instruction=system_instruction,
                    apply_chat_template=bool(apply_chat_template),
                    fewshot_as_multiturn=fewshot_as_multiturn,
                    chat_template=lm.apply_chat_template if apply_chat_template else None,
                    tokenizer_name=getattr(lm, "tokenizer_name", "") if apply_chat_template else "",
                )
                for instance in task.instances:
                    _encode_as_hflm(lm, instance)
        finally:
            restore()


def _encode_as_hflm(lm, instance) -> None:
    """The encodings lm-eval's `HFLM` makes of one request before it scores it, through `lm`'s public (here wrapped,
    checking) `tok_encode` / `tok_batch_encode`: a log-likelihood request's context + continuation and its context
    (trailing spaces moved to the continuation; seq2seq: context and continuation apart), a generation prompt for
    the sort by length and then in its batch, left-truncated to `max_length - max_gen_toks`."""
    if instance.request_type == "loglikelihood":
        context, continuation = instance.args
        if context == "":  # lm-eval scores the continuation after the prefix token
            lm.tok_encode(continuation, add_special_tokens=False)
            return
        stripped = context.rstrip()
        if lm.backend == "causal":
            lm.tok_encode(context + continuation)
            lm.tok_encode(stripped)
        else:
            lm.tok_encode(stripped)
            lm.tok_encode(context[len(stripped) :] + continuation, add_special_tokens=False)
    elif instance.request_type == "generate_until":
        from lm_eval.models.utils import normalize_gen_kwargs

        context, gen_kwargs = instance.args
        lm.tok_encode(context)
        max_gen_toks = normalize_gen_kwargs(gen_kwargs, lm.max_gen_toks)["max_gen_toks"]
        room = lm.max_length - max_gen_toks if lm.backend == "causal" else lm.max_length
        lm.tok_batch_encode([context], left_truncate_len=room, truncation=lm.truncation)


def _prefixed_tasks(tasks: list[str], prefix, prefixes: set[str], include_path, metadata):
    """`(task_manager, [Task])`: fresh lm-eval Task objects of `tasks` whose description is `prefix` followed by the
    task's own description (a string prefix rendered per document as lm-eval renders a description; the per-document
    prefixes go into `prefixes`); an empty string changes nothing, and a `loglikelihood_rolling` task is refused when
    `prefix` is not empty."""
    tm = task_manager(include_path, include_defaults=not set(tasks) <= _PACKAGED, metadata=metadata)
    loaded = list(tm.load(tasks)["tasks"].values())  # fresh Task objects: the settings below touch only these
    _check_no_rolling_tasks(loaded, prefix)
    if isinstance(prefix, str):
        if prefix == "":  # nothing to place: the tasks' prompts stay lm-eval's own (their descriptions included)
            return tm, loaded
        prefix = _rendered(prefix)  # rendered per document as lm-eval renders a description
    for task in loaded:
        # in front of the task's own description (e.g. mmlu's "The following are multiple choice questions ..."),
        # which lm-eval resolves per document too: replacing it changed the task's prompts
        process = _with_prefix_field(task.config.process_docs, prefix, prefixes, task, task.config.description)
        task.set_config("process_docs", process)
        task.set_config("description", PREFIX_FIELD)
    return tm, loaded


def _check_no_rolling_tasks(loaded: Sequence, prefix: str | Callable[[dict], str]) -> None:
    """Refuse a `loglikelihood_rolling` task when there is a prefix: lm-eval builds its requests from the document's
    text alone (no description), so the prefix would not be in them and the score would be the one without it."""
    if not callable(prefix) and prefix == "":
        return
    rolling = [task.config.task for task in loaded if getattr(task, "OUTPUT_TYPE", None) == "loglikelihood_rolling"]
    if rolling:
        raise ValueError(
            f"evaluate_with_prefix: task(s) {rolling} are loglikelihood_rolling tasks, whose requests lm-eval builds "
            "from the document's text alone (no description), so the prefix would not be in them; evaluate them "
            "with prefix='' or with evaluate_model."
        )


def _rendered(template: str) -> Callable[[dict], str]:
    """`template` rendered for each document as lm-eval renders a task `description` (Jinja over its fields, in
    lm-eval's own Jinja environment), compiled once: lm-eval's `apply_template` compiles it again for every document."""
    from lm_eval.utils import env

    compiled = env.from_string(template)
    return lambda doc: compiled.render(**doc)


def _with_prefix_field(
    process_docs,
    prefix: Callable[[dict], str],
    seen: set[str] | None = None,
    task=None,
    description: str | None = None,
):
    """The task's `process_docs` followed by a column holding each document's prefix and then the task's own
    `description` as lm-eval resolves it for the document (read by `description`); the prefixes alone are also added
    to `seen`."""

    def process(dataset):
        if process_docs is not None:
            dataset = process_docs(dataset)
        rows = dataset.to_list() if hasattr(dataset, "to_list") else dataset  # one read, not a formatted read per row
        column = [str(prefix(dict(doc))) for doc in rows]
        if seen is not None:
            seen.update(column)
        if description:
            own = [str(task.resolve_field(dict(doc), description) or "") for doc in rows]
            column = [p + d for p, d in zip(column, own, strict=True)]
        return dataset.add_column(PREFIX_FIELD, column)

    return process


def _encode_prefixes_apart(lm, prefixes: set[str], apart: bool = True) -> Callable[[], None]:
    """Wrap lm-eval's `HFLM` `lm`'s public `tok_encode` and `tok_batch_encode` for strings that carry one of
    `prefixes` (filled in while the tasks load): the longest one at the start, else the leftmost one (lm-eval puts a
    `system_instruction` or a chat template's header before the task description):

    - with `apart`, such a string is encoded as the tokens of the text before the prefix (if any, encoded by `lm`),
      the prefix's tokens (encoded by `lm` when it starts the string) and the rest's own tokens;
    - with or without `apart`, such a string must fit what lm-eval keeps of a prompt, else a `ValueError`: the
      `left_truncate_len` it passes (`generate_until`: `max_length - max_gen_toks`), otherwise `max_length + 1` tokens
      (what `loglikelihood` keeps of context + continuation, both encoded through `tok_encode`; `max_length` for a
      seq2seq model's context). lm-eval cuts longer ones from the left, the prefix first.

    Returns:
        A function that gives `lm` its own methods back.
    """
    import torch
    from lm_eval.models.huggingface import HFLM

    if not isinstance(lm, HFLM):
        raise TypeError(
            f"encode_prefix_apart needs lm-eval's HFLM (a model object or a folder), got {type(lm).__name__}."
        )
    tokenizer, encode, batch_encode = lm.tokenizer, lm.tok_encode, lm.tok_batch_encode
    own = {name: lm.__dict__[name] for name in ("tok_encode", "tok_batch_encode") if name in lm.__dict__}

    search = {"size": -1, "pattern": None}  # the prefixes as one regex (rebuilt when the set grows while loading)

    def split(string: str) -> tuple[int, str] | None:
        """Where the prompt's prefix starts and which it is: at the start (the longest there), else the leftmost
        (lm-eval's `system_instruction`, or a chat template's header, comes before the task description)."""
        at_start = max((p for p in prefixes if p and string.startswith(p)), key=len, default=None)
        if at_start is not None:
            return 0, at_start
        if search["size"] != len(prefixes):
            alternatives = sorted((p for p in prefixes if p), key=len, reverse=True)  # the longest first at a place
            search["pattern"] = re.compile("|".join(map(re.escape, alternatives))) if alternatives else None
            search["size"] = len(prefixes)
        found = search["pattern"].search(string) if search["pattern"] is not None else None
        return (found.start(), found.group()) if found else None

    def check(length: int, left_truncate_len: int | None) -> None:
        if left_truncate_len:  # generate_until: room for the generated tokens
            limit, what = left_truncate_len, f"max_length={lm.max_length} less the tokens to generate"
        elif getattr(lm, "backend", "causal") == "causal":  # loglikelihood: the last token is scored, not fed
            limit, what = lm.max_length + 1, f"max_length={lm.max_length}, + 1 for the last token, scored and not fed"
        else:
            limit, what = lm.max_length, f"max_length={lm.max_length}"
        if length > limit:
            raise ValueError(
                f"evaluate_with_prefix: a prompt with the prefix is {length} tokens, but lm-eval keeps only "
                f"the last {limit} for this model's context ({what}): it would cut the prefix off and the score would "
                "be reported as a with-prefix one. Lower num_fewshot (the metadata recipe's --eval_fewshot) or, where "
                "the model supports longer inputs, pass a larger max_length."
            )

    def tok_encode(string, add_special_tokens=None, left_truncate_len=None, **kwargs):
        where = split(string)
        if where is None:
            return encode(string, add_special_tokens=add_special_tokens, left_truncate_len=left_truncate_len, **kwargs)
        if apart:  # [what lm-eval put before the prefix] prefix rest, each tokenized on its own
            start, prefix = where
            end = start + len(prefix)
            if start:
                ids = encode(string[:start], add_special_tokens=add_special_tokens, **kwargs)
                ids = ids + tokenizer.encode(prefix, add_special_tokens=False)
            else:
                ids = encode(prefix, add_special_tokens=add_special_tokens, **kwargs)
            ids = ids + tokenizer.encode(string[end:], add_special_tokens=False)
        else:  # lm-eval's own encoding, whole: truncation is refused below
            ids = encode(string, add_special_tokens=add_special_tokens, **kwargs)
        check(len(ids), left_truncate_len)
        return ids

    def tok_batch_encode(strings, padding_side="left", left_truncate_len=None, truncation=False):
        if not any(split(s) for s in strings):
            return batch_encode(strings, padding_side, left_truncate_len, truncation)
        if not apart:  # lm-eval's own encoding, untruncated, to see each prompt's length
            ids, mask = batch_encode(strings, padding_side, None, truncation)
            for string, length in zip(strings, mask.sum(dim=1).tolist(), strict=True):
                if split(string):
                    check(length, left_truncate_len)
            if left_truncate_len and ids.shape[1] > left_truncate_len:  # a prompt without a prefix: lm-eval cuts it
                return batch_encode(strings, padding_side, left_truncate_len, truncation)
            return ids, mask
        rows = [tok_encode(s, left_truncate_len=left_truncate_len) for s in strings]
        width = max(len(r) for r in rows)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            cols = slice(width - len(row), width) if padding_side == "left" else slice(0, len(row))
            ids[i, cols] = torch.tensor(row, dtype=torch.long)
            mask[i, cols] = 1
        return ids, mask

    def restore() -> None:
        for name in ("tok_encode", "tok_batch_encode"):
            if name in own:
                setattr(lm, name, own[name])
            else:
                lm.__dict__.pop(name, None)

    lm.tok_encode, lm.tok_batch_encode = tok_encode, tok_batch_encode
    return restore
