"""Zero- and few-shot prompting of a decoder: no training, only scoring.

A prompt is `instruction`, then demonstrations (each the template filled
with an example's text, followed by its label's verbalizer and a blank
line), then the query's filled template, whose end is the answer cue. The
decoder's next-token log-probability of each class's verbalizer (one token
each) at the prompt's last token is the class score; class probabilities
are the softmax over the verbalizers only. Calibration (Zhao et al. 2021)
divides p(y | prompt) by p(y | the same prompt with the query text "N/A")
and renormalises, removing the prompt's bias towards some label tokens.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from w2s_jax.core import sharding
from w2s_jax.core.errors import UsageError
from w2s_jax.models import classifier, registry
from w2s_jax.train import loop

SEPARATOR = "\n\n"
CONTENT_FREE = "N/A"


def parse_verbalizers(text: str) -> list[str]:
    """" negative| positive" -> [" negative", " positive"]: spaces are part
    of a verbalizer (BPE tokens carry their leading space)."""
    return text.split("|")


def verbalizer_ids(tokenizer, verbalizers: Sequence[str], model_name: str
                   ) -> list[int]:
    """The one token of each verbalizer, or UsageError naming the one that
    is not a single token (or shares its token with another class)."""
    ids = []
    for text in verbalizers:
        encoded = tokenizer.encode([text], special_tokens=False)[0]
        if len(encoded) != 1:
            raise UsageError(
                f"config.prompting.verbalizers: {text!r} encodes to "
                f"{len(encoded)} tokens {list(encoded)} with {model_name!r}'s "
                f"tokenizer; each verbalizer must be exactly one token: for "
                f"BPE tokenizers use a common word with its leading space "
                f"(e.g. ' No| Yes'), for byte tokenizers single characters "
                f"(e.g. 'N|Y')")
        if encoded[0] in ids:
            other = verbalizers[ids.index(encoded[0])]
            raise UsageError(
                f"config.prompting.verbalizers: {other!r} and {text!r} are "
                f"the same token ({encoded[0]}) for {model_name!r}; give each "
                f"class a different verbalizer")
        ids.append(int(encoded[0]))
    return ids


def render(instruction: str, demos: Sequence[tuple[str, str]], template: str,
           query: str) -> str:
    """The prompt text; `demos` are (text, verbalizer) pairs, oldest first."""
    head = instruction + SEPARATOR if instruction else ""
    shots = "".join(template.format(text=text) + verbalizer + SEPARATOR
                    for text, verbalizer in demos)
    return head + shots + template.format(text=query)


@dataclasses.dataclass
class Prompts:
    ids: list[np.ndarray]  # token ids of each prompt
    dropped: np.ndarray  # int [N]: demonstrations dropped to fit max_ctx
    truncated: np.ndarray  # bool [N]: the query's text was cut as well


def build_prompts(tokenizer, queries: Sequence[str], *, instruction: str,
                  demos: Sequence[tuple[str, str]], template: str,
                  max_ctx: int) -> Prompts:
    """Each query's prompt, at most max_ctx tokens: demonstrations are
    dropped from the left (oldest first) until it fits; if the query alone
    is still too long, its text is cut from the left, so the instruction
    and the template's end (the answer cue) stay whole.

    Whole prompt strings are tokenized (special tokens included, as the
    task's examples are), never pieces joined, so every prompt tokenizes
    exactly as its text would."""
    ids, dropped, truncated = [], [], []
    for query in queries:
        # Every variant in one batch call: most queries fit at the first.
        variants = tokenizer.encode([render(instruction, demos[n:], template, query)
                                     for n in range(len(demos) + 1)])
        fits = [n for n, v in enumerate(variants) if len(v) <= max_ctx]
        if fits:
            ids.append(variants[fits[0]])
            dropped.append(fits[0])
            truncated.append(False)
        else:
            ids.append(_cut_query(tokenizer, instruction, template, query, max_ctx))
            dropped.append(len(demos))
            truncated.append(True)
    return Prompts([np.asarray(x, np.int32) for x in ids],
                   np.asarray(dropped, np.int64), np.asarray(truncated, bool))


def _cut_query(tokenizer, instruction, template, query, max_ctx) -> list[int]:
    """The zero-demonstration prompt with the fewest leading characters of
    the query's text removed that fits (a bisection on the cut)."""
    def encoded(cut):
        return tokenizer.encode([render(instruction, [], template,
                                        query[cut:])])[0]
    best = encoded(len(query))
    if len(best) > max_ctx:
        raise UsageError(
            f"config.max_ctx={max_ctx} is too small for the prompt without "
            f"any text: config.prompting.instruction and template alone are "
            f"{len(best)} tokens; raise --config.max_ctx or shorten them")
    lo, hi = 0, len(query)  # encoded(lo) is too long, encoded(hi) fits
    while hi - lo > 1:
        mid = (lo + hi) // 2
        ids = encoded(mid)
        if len(ids) <= max_ctx:
            hi, best = mid, ids
        else:
            lo = mid
    return best


def draw_demonstrations(labels: np.ndarray, k: int, num_classes: int,
                        rng: np.random.Generator) -> np.ndarray:
    """k positions into `labels`, class-balanced as far as the labels allow
    (classes take turns, in a random order, until k are drawn), shuffled so
    that classes interleave in the prompt."""
    if k > len(labels):
        raise UsageError(f"config.prompting.shots={k} is more than the "
                         f"{len(labels)} examples to draw demonstrations "
                         f"from; lower config.prompting.shots")
    queues = [list(rng.permutation(np.flatnonzero(labels == c)))
              for c in rng.permutation(num_classes)]
    picked = []
    while len(picked) < k:
        for queue in queues:
            if queue and len(picked) < k:
                picked.append(queue.pop(0))
    return rng.permutation(np.asarray(picked, np.int64))


def make_score_step(model: registry.ResolvedModel, token_ids: Sequence[int],
                    mesh, param_shardings, dtype=jnp.float32):
    """A jitted step: right-padded (input_ids, mask) -> [B, K] log-probs
    (over the whole vocabulary) of the K tokens at each row's last real
    token. Params: the backbone's, sharded as `param_shardings`."""
    backbone = registry.backbone(model, dtype=dtype)
    ids = jnp.asarray(token_ids, jnp.int32)

    def score(params, inputs):
        input_ids, mask = inputs
        with sharding.activation_rules(mesh):
            hidden = backbone.apply({"params": params}, input_ids, mask)
        last = classifier.pool_last_token(hidden.astype(jnp.float32), mask)
        logits = registry.lm_logits(model, params, last)
        return jax.nn.log_softmax(logits, axis=-1)[:, ids]

    return jax.jit(score, in_shardings=(param_shardings,
                                        sharding.batch_sharding(mesh, 0)),
                   out_shardings=sharding.replicated(mesh))


def score(step, params, prompts: list[np.ndarray], *, num_classes: int,
          pad_id: int, batch_size: int, max_ctx: int, mesh) -> np.ndarray:
    """[N, K] verbalizer log-probs of each prompt, in the prompts' order
    (length-bucketed batches through loop.predict)."""
    return loop.predict(step, params,
                        make_inputs=loop.token_inputs(prompts, pad_id=pad_id,
                                                      max_ctx=max_ctx),
                        lengths=np.array([len(p) for p in prompts]),
                        batch_size=batch_size, max_ctx=max_ctx, mesh=mesh,
                        num_classes=num_classes)


def class_probs(logprobs: np.ndarray, prior_logprobs: np.ndarray | None = None
                ) -> np.ndarray:
    """Softmax over the verbalizers of log p(y | prompt), minus the
    content-free prior's log p(y | N/A) when given: p(y|x) / p(y|N/A),
    renormalised."""
    z = np.asarray(logprobs, np.float64)
    if prior_logprobs is not None:
        z = z - prior_logprobs
    z = z - z.max(-1, keepdims=True)
    p = np.exp(z)
    return (p / p.sum(-1, keepdims=True)).astype(np.float32)
