"""Verifier of the 'say A B' copy task: 1.0 when the response starts with the two words of
the label, else 0.0."""


def reward_func(queries, prompts, labels, responses=None):
    responses = responses or [q[len(p):] for q, p in zip(queries, prompts, strict=True)]
    return [float(r.split()[:2] == label.split())
            for r, label in zip(responses, labels, strict=True)]
