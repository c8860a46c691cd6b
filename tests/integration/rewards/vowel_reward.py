"""A dense, learnable rule reward for the tiny random model: the share of vowels among the
letters of the response. A random policy scores ~0.3; pushing it up is easy to learn."""


def reward_func(queries, prompts, labels, responses=None):
    responses = responses or [q[len(p):] for q, p in zip(queries, prompts, strict=True)]
    out = []
    for r in responses:
        letters = [c for c in r.lower() if c.isalpha()]
        out.append(sum(c in "aeiou" for c in letters) / len(letters) if letters else 0.0)
    return out
