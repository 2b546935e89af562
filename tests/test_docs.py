from pathlib import Path

from dfrt.config import paper
from dfrt.contracts import render_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_graph_contract_doc_is_generated_from_code():
    assert (ROOT / "docs" / "graphs.md").read_text() == render_markdown(paper()), (
        "docs/graphs.md is stale: run `python -m dfrt.contracts > docs/graphs.md`"
    )
