"""Token samplers on the host, over one row of logits.

The chain, in llama.cpp's order: repeat penalty, top-k, top-p, min-p, temperature, then a draw
from the softmax (float64). top-p and min-p therefore see the distribution *before* temperature.
Temperature 0 is greedy: the arg-max after the repeat penalty, the lowest id on ties.
"""
import numpy as np


class Sampler:
    """`Sampler(temperature=0.8, top_k=40, seed=1).sample(logits, history) -> token id`.

    * repeat_penalty: every distinct id among the last `repeat_last_n` ids of `history` (all of
      it when -1, none when 0) has its logit divided by the penalty when positive, multiplied
      when negative (llama.cpp's rule).
    * top_k: keep the k largest logits (0 = off); ties at the cut go to the lower id.
    * top_p: keep the most probable ids until their probabilities add up to at least p (the one
      that crosses p included, always at least one id; 1.0 = off).
    * min_p: keep the ids whose probability is at least min_p times the largest (0 = off).
    * presence_penalty, frequency_penalty (OpenAI's): every id among the `generated` ids passed
      to sample() has presence_penalty + frequency_penalty x its count subtracted from its logit.
    * n_valid: ids >= n_valid are vocabulary rows with no token; they are never chosen.
    """

    def __init__(self, temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0,
                 repeat_last_n=64, seed=None, n_valid=None, presence_penalty=0.0, frequency_penalty=0.0):
        if not all(np.isfinite(v) for v in (temperature, top_p, min_p, repeat_penalty,
                                             presence_penalty, frequency_penalty)):
            raise ValueError("sampler: settings must be finite numbers")
        if temperature < 0 or top_k < 0 or not 0 <= top_p <= 1 or not 0 <= min_p <= 1:
            raise ValueError(f"sampler: invalid settings temperature={temperature} top_k={top_k} "
                             f"top_p={top_p} min_p={min_p}")
        if repeat_penalty <= 0 or repeat_last_n < -1:
            raise ValueError(f"sampler: invalid repeat_penalty={repeat_penalty} "
                             f"repeat_last_n={repeat_last_n}")
        self.temperature = temperature
        self.top_k = top_k
        self.top_p = top_p
        self.min_p = min_p
        self.repeat_penalty = repeat_penalty
        self.repeat_last_n = repeat_last_n
        self.n_valid = n_valid
        self.presence_penalty = presence_penalty
        self.frequency_penalty = frequency_penalty
        self.rng = np.random.default_rng(seed)

    def penalized(self, logits: np.ndarray, history, generated=()) -> np.ndarray:
        """The valid logits as float64, with the repeat penalty applied."""
        logits = np.asarray(logits)
        if logits.ndim != 1:
            raise ValueError(f"sampler: logits have shape {logits.shape}, expected [n_vocab]")
        n = logits.shape[0] if self.n_valid is None else min(self.n_valid, logits.shape[0])
        x = logits[:n].astype(np.float64)
        if not np.isfinite(x).any() or np.isnan(x).any():
            raise ValueError("sampler: logits hold NaN or no finite value")
        if self.repeat_penalty != 1.0 and self.repeat_last_n != 0 and len(history):
            recent = history if self.repeat_last_n == -1 else history[-self.repeat_last_n:]
            ids = np.unique(np.asarray(recent, dtype=np.int64))
            ids = ids[(ids >= 0) & (ids < n)]
            x[ids] = np.where(x[ids] > 0, x[ids] / self.repeat_penalty, x[ids] * self.repeat_penalty)
        if (self.presence_penalty or self.frequency_penalty) and len(generated):
            ids, counts = np.unique(np.asarray(generated, dtype=np.int64), return_counts=True)
            keep = (ids >= 0) & (ids < n)
            x[ids[keep]] -= self.presence_penalty + self.frequency_penalty * counts[keep]
        return x

    def distribution(self, logits: np.ndarray, history=(), generated=()) -> tuple:
        """The candidates left after the filters and their probabilities after temperature:
        (ids int64 [m], probs float64 [m]), most probable first. Greedy gives one id."""
        x = self.penalized(logits, history, generated)
        if self.temperature == 0:
            return np.array([int(np.argmax(x))]), np.ones(1)
        order = np.lexsort((np.arange(x.size), -x))      # by logit descending, then by id
        ids, kept = order, x[order]
        if self.top_k > 0:
            ids, kept = ids[:self.top_k], kept[:self.top_k]
        if self.top_p < 1.0:
            cum = np.cumsum(_softmax(kept))
            n = int(np.searchsorted(cum, self.top_p, side="left")) + 1
            ids, kept = ids[:n], kept[:n]
        if self.min_p > 0.0:
            probs = _softmax(kept)
            n = int(np.count_nonzero(probs >= self.min_p * probs[0]))
            ids, kept = ids[:max(n, 1)], kept[:max(n, 1)]
        return ids, _softmax(kept / self.temperature)

    def sample(self, logits: np.ndarray, history=(), generated=()) -> int:
        if self.temperature == 0 and self.repeat_penalty == 1.0 and not self.presence_penalty \
                and not self.frequency_penalty and np.ndim(logits) == 1:
            valid = logits[:self.n_valid] if self.n_valid is not None else logits
            if np.isnan(valid).any() or not np.isfinite(valid).any():
                raise ValueError("sampler: logits hold NaN or no finite value")
            return int(np.argmax(valid))            # greedy without penalties: no float64 copy
        ids, probs = self.distribution(logits, history, generated)
        if ids.size == 1:
            return int(ids[0])
        cum = np.cumsum(probs)
        pick = int(np.searchsorted(cum, self.rng.random() * cum[-1], side="right"))
        return int(ids[min(pick, ids.size - 1)])


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()
