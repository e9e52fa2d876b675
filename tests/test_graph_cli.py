"""``failtrace graph``: outputs, one-line errors with exit code 2, exit code 3 after a closed-form fallback."""

from __future__ import annotations

import json

import pytest
import torch

from failtrace.cli import main

BASE = ["graph", "--prompt", "The capital of France is", "--target", " Paris", "--contrast", " Lyon", "-q"]


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("extra,msg", [
    (["--node-threshold", "1.5"], "--node-threshold must be in [0, 1]"),
    (["--node-threshold", "-0.1"], "--node-threshold must be in [0, 1]"),
    (["--prune", "cumulative:0"], "--prune 'cumulative:0': the cumulative mass P must be in (0, 1]"),
    (["--prune", "cumulative:1.2"], "the cumulative mass P must be in (0, 1], got 1.2"),
    (["--prune", "global:-3"], "--prune 'global:-3': the global edge threshold TAU must be"),
    (["--prune", "sometimes"], "use cumulative:P (0 < P <= 1) or global:TAU (TAU >= 0)"),
    (["--prune", "median:0.5"], "unknown mode 'median'"),
    (["--edges", "magic"], "--edges 'magic' is not an edge algorithm; valid: auto, naive, packed, closed-form"),
    (["--method", "closed-form"], "--method 'closed-form' is not an LRP method; valid: attnlrp, cp-lrp"),
    (["--method", "gradxinput"], "--method gradxinput gives the graph's final node (the last layer's output) no "
                                 "relevance"),
    (["--png", "out.jpg"], "expected a file name ending in .png"),
])
def test_bad_options_fail_before_loading(capsys, extra, msg):
    assert main(BASE + extra) == 2
    err = capsys.readouterr().err
    assert msg in err and err.startswith("error: ") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_empty_prompt(capsys):
    assert main(["graph", "--prompt", "  ", "--contrast", " Lyon"]) == 2
    assert "the prompt is empty" in capsys.readouterr().err


@pytest.mark.model
@pytest.mark.parametrize("layers,msg", [("30", "layer 30 is out of range: the model has 30 layers"),
                                        ("2,5", "is not contiguous")])
def test_layers_out_of_range(capsys, layers, msg):
    assert main(BASE + ["--layers", layers]) == 2
    assert msg in capsys.readouterr().err


@pytest.mark.model
def test_graph_outputs(tmp_path, capsys, bundled):
    out = {k: tmp_path / f"g.{k}" for k in ("json", "html", "png", "svg")}
    ct = tmp_path / "ct.json"
    rc = main(BASE[:-1] + ["--layers", "28-29", "--mid-nodes", "--json", str(out["json"]), "--html",
                           str(out["html"]), "--png", str(out["png"]), "--svg", str(out["svg"]),
                           "--circuit-tracer-json", str(ct), "--node-threshold", "0.05", "--prune", "cumulative:0.9"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    for path in list(out.values()) + [ct]:
        assert path.exists() and path.stat().st_size > 0
        assert f"wrote {path}" in captured.err.replace("\n", "")
    data = json.loads(out["json"].read_text())
    assert data["metadata"]["target"]["text"] == " Paris" and data["metadata"]["contrast"]["text"] == " Lyon"
    assert data["metadata"]["node_threshold"] == 0.05 and data["metadata"]["prune"] == "cumulative:0.9"
    assert data["metadata"]["methods_used"] == {"28": "closed-form", "29": "closed-form"}
    assert [s["id"] for s in data["stages"]] == ["L27", "L28.mid", "L28", "L29.mid", "L29"]
    assert "nodes" in json.loads(ct.read_text())
    assert "pruned (node >= 0.05, cumulative:0.9)" in captured.out  # results on stdout, as attribute's
    # the options reach the computation: the file is the API's graph for the same options, node for node
    import failtrace

    api = failtrace.build_graph(bundled, "The capital of France is", target=" Paris", contrast=" Lyon",
                                layers="28-29", mid_nodes=True, node_threshold=0.05, prune="cumulative:0.9").pruned
    g = api.graph
    want = {g.stages[st].node_id(tok): float(g.relevance[st, tok]) for st, tok in api.node_list()}
    assert {n["id"]: n["relevance"] for n in data["nodes"]} == pytest.approx(want, rel=1e-5, abs=1e-7)
    assert len(data["links"]) == api.num_edges and 0 < api.num_nodes < g.relevance.size


@pytest.mark.model
def test_closed_form_fallback_exit_code(tmp_path, capsys):
    """A model the closed form does not cover (Gemma-2 soft-capping): packed is used, the CLI says so, exit 3."""
    import failtrace
    from failtrace_testkit.tiny import tiny_model

    tok = failtrace.load_model(progress=False).tokenizer
    model = tiny_model("gemma2", vocab=len(tok))
    folder = tmp_path / "tiny-gemma2"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    args = ["graph", "--model", str(folder), "--prompt", "two plus two is", "--target", "#5", "--contrast", "#7",
            "-q", "--json", str(tmp_path / "g.json")]
    assert main(args + ["--edges", "closed-form"]) == 3
    err = capsys.readouterr().err
    assert "does not cover layers [0, 1]" in err and "packed" in err and "soft-capping" in err
    assert (tmp_path / "g.json").exists()
    assert main(args + ["--edges", "auto"]) == 0


@pytest.mark.model
def test_python_api_build_graph():
    import failtrace
    from failtrace.errors import FailtraceError
    from failtrace.graph import AttributionGraph

    lm = failtrace.load_model(progress=False)
    g = failtrace.build_graph(lm, "The capital of France is", target=" Paris", contrast=" Lyon", layers="29",
                              node_threshold=0.0, prune="global:0.01")
    assert isinstance(g, failtrace.AttributionGraph) and isinstance(g, AttributionGraph)
    assert [s.name for s in g.stages] == ["L28", "L29"]
    assert g.metadata["target"]["text"] == " Paris" and g.metadata["model"] == "smollm2-135m-instruct"
    assert abs(g.relevance[-1].sum() - g.objective_value) < 1e-3 * abs(g.objective_value)
    assert g.conservation_error() < 1e-4
    assert g.pruned.spec.mode == "global" and g.prune(0.0, "cumulative:0.5").num_edges >= 1
    with pytest.raises(FailtraceError, match="needs a contrast token"):
        failtrace.build_graph(lm, "The capital of France is", target=" Paris")
    with pytest.raises(FailtraceError, match="the same token"):
        failtrace.build_graph(lm, "The capital of France is", target=" Paris", contrast=" Paris")
    with pytest.raises(FailtraceError, match="unknown edge algorithm 'fast'"):
        failtrace.build_graph(lm, "The capital of France is", target=" Paris", contrast=" Lyon", edges="fast")
    with pytest.raises(FailtraceError, match="unknown method 'packed'; valid: attnlrp"):
        failtrace.build_graph(lm, "The capital of France is", target=" Paris", contrast=" Lyon", method="packed")


def test_summary_off_a_terminal_and_distinct_paths(capsys, bundled):
    """Off a terminal the layer progress is plain lines, at most one per 5 s and the last layer's (tqdm wrote
    carriage-return frames into logs; one line per layer made 30 lines of a one-second graph),
    and two different top paths never print alike: each line names where its path moves to another token (before,
    two paths from one token that moved at different layers both read ``'·capital' [27] → L29/41``)."""
    from failtrace.graph.metrics import graph_metrics

    assert main(BASE[:1] + BASE[3:-1] + ["--chat", "--answer-prefix", "The capital of France is", "--prompt",
                                         "What is the capital of France?", "--top-k", "8"]) == 0
    captured = capsys.readouterr()
    err, out = captured.err, captured.out
    assert "\r" not in err
    n_layers = bundled.model.config.num_hidden_layers
    progress = [ln.split(", ") for ln in err.splitlines() if ln.startswith("graph edges")]
    assert progress[-1][:2] == ["graph edges (auto)", f"layers: {n_layers}/{n_layers}"]
    seconds = [int(p[2].removesuffix(" s")) for p in progress]
    assert len(progress) <= 1 + seconds[-1] // 5 and seconds == sorted(seconds)
    lines = [ln.strip() for ln in out.splitlines() if ln.strip().startswith("path ")]
    assert not any(ln.strip().startswith("path ") for ln in err.splitlines())
    api = failtrace_graph(bundled)
    metrics = graph_metrics(api, top_k=8)
    paths = metrics["top_paths"][:8] + metrics["bottom_paths"][:8]  # towards the target, then the contrast
    assert len(lines) == len(paths) >= 4 and len({tuple(p["nodes"]) for p in paths}) == len(paths)
    assert len(set(lines)) == len(lines)  # distinct paths, distinct lines
    assert [ln.startswith("path +") for ln in lines] == [p["sign"] > 0 for p in paths]
    for line, p in zip(lines, paths):
        shown = line.split(" → ")[1:]
        assert shown[-1] == p["nodes"][-1]
        # the path, rebuilt from the nodes shown (it stays on a token until the next node shown), is the path itself
        hops = {node: int(node.split("/")[1]) for node in shown}
        pos, rebuilt = p["input_token"], []
        for node in p["nodes"]:
            pos = hops.get(node, pos)
            rebuilt.append(pos)
        assert rebuilt == p["positions"]


def failtrace_graph(bundled):
    import failtrace

    return failtrace.build_graph(bundled, "What is the capital of France?", target=" Paris", contrast=" Lyon",
                                 chat=True, answer_prefix="The capital of France is").pruned


def test_position_explains_an_earlier_token(tmp_path, bundled):
    """The too-long error of both commands suggests --position; graph now has it, as attribute does: the graph of
    the prediction after token 4 ends at node L<last>/4 and sees only the first five tokens."""
    out = tmp_path / "g.json"
    assert main(["graph", "--prompt", "The capital of France is Paris and", "--target", " Paris", "--contrast",
                 " Lyon", "--position", "4", "-q", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    last = bundled.model.config.num_hidden_layers - 1
    assert data["metadata"]["n_tokens"] == 5 and data["metadata"]["tokens"][-1] == " is"
    assert f"L{last}/4" in {n["id"] for n in data["nodes"]}


def test_the_picture_says_what_its_colours_mean(bundled):
    """The static picture has no legend box: its title names Δℓ (the logit difference) and what red, blue, grey,
    node size and edge width mean."""
    from failtrace.views.graph_static import default_title

    pruned = failtrace_graph(bundled)
    title = default_title(pruned, 10)
    assert f"Δℓ {pruned.graph.objective_value:.3g}" in title
    assert "Red: supports the target, blue: the contrast, grey: a special token id" in title
