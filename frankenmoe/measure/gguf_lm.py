"""A GGUF file as an lm-eval model: llama.cpp computes the log-probs, lm-eval scores them.

Registered with lm-eval as `frankenmoe-gguf` (model_args: gguf=FILE, tokenizer=FOLDER).
The text is tokenized by the merged model's own tokenizer, as lm-eval's `hf` model does
(TemplateLM's context/continuation split, HFLM's prefix token and rolling windows), and
llama.cpp runs those token ids: a GGUF score differs from the 16-bit one by the weights
alone, not by a second tokenizer. Each sequence reuses the KV cache of the tokens it
shares with the sequence before (the choices of a multiple-choice item share its
context: lm-eval asks for them one after another), in windows of at most 2048 tokens
(lm-eval's hf model takes the model's own context length: a rolling document longer
than 2048 tokens is cut into more windows here).
Runs only inside the lm-eval child process (frankenmoe/measure/lm_eval_run.py).
"""

from __future__ import annotations

import os

import lm_eval.models  # noqa: F401  lm-eval's own model types, registered first (see below)
from lm_eval import utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model


# lm-eval fills its model registry with its own types only when the registry is empty
# (get_model), so registering this one before them would hide `hf`: they are imported above.
@register_model("frankenmoe-gguf")
class GgufLM(TemplateLM):
    def __init__(self, gguf: str, tokenizer: str, max_length: int = 2048, **_: object) -> None:
        from llama_cpp import Llama
        from transformers import AutoTokenizer

        super().__init__()
        threads = max(1, len(os.sched_getaffinity(0)))
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        self.max_length = max_length
        self.llm = Llama(
            model_path=gguf,
            n_ctx=max_length,
            n_batch=512,
            logits_all=True,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        extra = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        return self.tokenizer.encode(string, **extra)

    def _score(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        """Sum of the continuation's log-probs after the context, and whether each of
        its tokens is the greedy choice (the sequence cut to max_length from the left)."""
        import numpy as np

        n = len(continuation)
        if n == 0:
            return 0.0, True
        ids = (context + continuation)[-(self.max_length + 1) :]
        # the KV cache of the tokens this sequence shares with the last one is kept (a
        # multiple-choice item's choices share its context), at least one token is run
        head = ids[:-1]
        keep = min(self.llm.longest_token_prefix(self.llm.input_ids[: self.llm.n_tokens].tolist(), head), len(head) - 1)
        self.llm.n_tokens = keep
        self.llm.eval(head[keep:])
        logits = np.asarray(self.llm.scores[: len(ids) - 1], dtype=np.float64)[-n:]
        logits -= logits.max(axis=-1, keepdims=True)
        logprobs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
        targets = np.asarray(ids[-n:])
        picked = logprobs[np.arange(n), targets]
        return float(picked.sum()), bool((logprobs.argmax(axis=-1) == targets).all())

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        return [self._score(context, continuation) for _, context, continuation in requests]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for (string,) in (req.args for req in requests):
            windows = map(
                utils.make_disjoint_window,
                utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                ),
            )
            out.append(sum(self._score(list(context), list(target))[0] for context, target in windows))
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        raise NotImplementedError("frankenmoe-gguf scores log-likelihoods only; generation tasks need the hf model")
