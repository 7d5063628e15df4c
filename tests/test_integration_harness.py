"""Real stack: draft_verify on a few BANKING77 items against the real vLLM server."""

import pytest

from evals.metrics import held_out
from evals.runner import evaluate
from evals.tasks import get_task
from scaffold.client import PolicyClient
from scaffold.embeddings import load_embedder
from scaffold.precedents import PrecedentIndex

pytestmark = pytest.mark.integration


def test_draft_verify_beats_bare_on_banking77(vllm_server):
    task = get_task("banking77")
    # A small bank keeps the test quick (MiniLM encodes ~40 texts/s here); training split only.
    train = held_out(task.load("train"), 600, seed=1)
    bank = PrecedentIndex.build([e.id for e in train], [e.question for e in train],
                                [task.label_of(e) for e in train], load_embedder(),
                                progress=False)
    items = held_out(task.load("test"), 12, seed=0)
    client = PolicyClient(vllm_server.base_url, vllm_server.model_name)
    lm = client.dspy_lm(temperature=0.0, max_tokens=24)

    bare = evaluate(task, "none", items, lm=lm, model_label="policy", progress=False)
    dv = evaluate(task, "draft_verify", items, lm=lm, model_label="policy", index=bank,
                  progress=False)

    assert bare.n == dv.n == 12 and dv.failed == 0
    assert dv.score > bare.score  # retrieval is what makes the tiny model work at all
    for tr in dv.traces:
        final = tr.final_call()
        assert final.messages[-1] == {"role": "assistant", "content": task.answer_prefix}
        assert final.prompt_tokens and final.completion_tokens  # usage reached the trace
        assert tr.step_names()[0] == "draft"
        assert set(tr.step_names()) <= {"draft", "verify"}
