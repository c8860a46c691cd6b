"""A dense, learnable rule reward for the tiny random model: the share of digits among the
non-space characters of the response. Tokens are either numeric or not, so every sampled
token moves the reward a lot, which makes the signal strong enough for a short CPU run."""


def reward_func(queries, prompts, labels, responses=None):
    responses = responses or [q[len(p):] for q, p in zip(queries, prompts, strict=True)]
    out = []
    for r in responses:
        chars = [c for c in r if not c.isspace()]
        out.append(sum(c.isdigit() for c in chars) / len(chars) if chars else 0.0)
    return out
