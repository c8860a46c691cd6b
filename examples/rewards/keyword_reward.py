"""An OpenRLHF-style rule reward: how often a response says "yes" or "good" (substring
count). Used by the methods' tests and docs/methods.md: a random tiny model emits those tokens
now and then, so best-of-n finds better samples, and training on them moves even the greedy
output within a round or two."""

KEYWORDS = ("yes", "good")


def reward_func(queries, prompts, labels, responses=None):
    responses = responses or [q[len(p):] for q, p in zip(queries, prompts, strict=True)]
    return {"rewards": [float(sum(r.count(k) for k in KEYWORDS)) for r in responses]}
