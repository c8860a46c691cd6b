"""Which causal LMs compute their logits as a plain `lm_head(final hidden states)`.

For those, the PPO actor can run the decoder alone and turn the response positions' hidden
states into log-probs chunk by chunk (:mod:`quartet.algos.chunked_logprobs`) instead of
materialising the logits. A model qualifies only when that is provably the same function:
its architecture's `ForCausalLM.forward` is `logits = lm_head(hidden_states[:, slice])` with
no scaling, soft-capping or auxiliary loss (checked by reading transformers 5.19's source for
each type listed), the output layer is a bias-free `nn.Linear`, and no adapter wraps it.
Every other model keeps the logits path.
"""

from __future__ import annotations

from torch import nn

__all__ = ["PLAIN_LM_HEAD_TYPES", "plain_output_layer"]

PLAIN_LM_HEAD_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})
"""`config.model_type`s whose logits are exactly `lm_head(hidden)`."""


def plain_output_layer(model: nn.Module) -> nn.Linear | None:
    """`model`'s output layer when its logits are `hidden @ lm_head.weight.T` of the final
    hidden states of `model.get_decoder()`; None otherwise (see the module doc)."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in PLAIN_LM_HEAD_TYPES:
        return None
    head = model.get_output_embeddings()
    if type(head) is not nn.Linear or head.bias is not None:
        return None
    return head
