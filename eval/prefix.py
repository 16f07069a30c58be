"""Run the blocks before the intervention once per batch: an edit at block L reruns only L+1.. .

Every intervention of the eval (an SAE spliced in, a clamp, a projection) replaces block ``layer``'s
output; blocks ``0..layer`` compute the same thing for every one of them. ``PrefixCache`` records
block ``layer``'s output the first time a batch of token ids is run and, on later runs of the same
batch, makes blocks ``0..layer`` return it without computing (their ``forward`` is swapped for the
call; hooks registered on block ``layer``, such as ``eval.downstream.splice``, still fire on the
recorded output). The embedding, rotary tables and masks still run: they are cheap and keep the
model's own forward in charge of everything after the cached block.

Memory: one ``[batch, T, d_model]`` tensor per distinct batch, in the model's dtype.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

from torch import Tensor, nn

from orthosae.common.model import decoder_layers


def _key(input_ids: Tensor, attention_mask: Tensor | None) -> str:
    h = hashlib.sha1(input_ids.detach().cpu().numpy().tobytes())
    h.update(str(tuple(input_ids.shape)).encode())
    if attention_mask is not None:
        h.update(attention_mask.detach().cpu().numpy().tobytes())
    return h.hexdigest()


class PrefixCache:
    """Block ``layer``'s clean output per batch of token ids (see the module docstring)."""

    def __init__(self, model: nn.Module, layer: int):
        self.model, self.layer = model, layer
        self.store: dict[str, tuple[Tensor, bool]] = {}  # key -> (output, returned as a tuple)
        self.hits = 0

    def hidden(self, run, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
        """``run()`` (a full forward of these ids) with blocks 0..layer served from the cache."""
        key = _key(input_ids, attention_mask)
        if key in self.store:
            self.hits += 1
            with self._served(*self.store[key]):
                return run()
        with self._recording(key):
            return run()

    @contextmanager
    def _recording(self, key: str) -> Iterator[None]:
        # registered first on a fresh forward, so it sees the block's clean output before any splice
        # hook (hooks run in registration order; a splice registered earlier would edit it first)
        layer = decoder_layers(self.model)[self.layer]
        hooks = dict(layer._forward_hooks)
        layer._forward_hooks.clear()

        def grab(_m, _i, output):
            h = output[0] if isinstance(output, tuple) else output
            self.store[key] = (h.detach().clone(), isinstance(output, tuple))

        handle = layer.register_forward_hook(grab)
        layer._forward_hooks.update(hooks)  # the splice (if any) runs after the grab
        try:
            yield
        finally:
            handle.remove()

    @contextmanager
    def _served(self, cached: Tensor, as_tuple: bool) -> Iterator[None]:
        layers = decoder_layers(self.model)
        wrap = (lambda h: (h,)) if as_tuple else (lambda h: h)

        def identity(hidden_states, *args, **kwargs):
            return wrap(hidden_states)

        def served(hidden_states, *args, **kwargs):
            return wrap(cached)

        patched = list(layers[: self.layer + 1])
        for i, block in enumerate(patched):
            block.forward = served if i == self.layer else identity  # instance attribute: hooks still run
        try:
            yield
        finally:
            for block in patched:
                del block.forward
