"""``failtrace graph``: an attribution graph of how relevance for Δℓ flows between hidden states across layers.

``--edges`` chooses the edge algorithm (auto, naive, packed, closed-form); ``--method`` the LRP rule (attnlrp,
cp-lrp; not gradxinput, whose final node carries no relevance), as in ``failtrace attribute``.

Exit codes: 0 success; 2 bad input (one-line message, no traceback); 3 the graph was written but ``--edges
closed-form`` did not cover some layers, which fell back to the packed algorithm (the message names them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from failtrace.cases.settings import CaseSettings
from failtrace.cli import options as opts
from failtrace.cli.checks import check_outputs
from failtrace.errors import FailtraceError

EXIT_FALLBACK = 3
# The defaults of --edges, --prune and --node-threshold: analyse's (CaseSettings); with --case, the case's own.
EDGES, PRUNE, NODE_THRESHOLD = (getattr(CaseSettings(), k) for k in ("edge_method", "prune", "node_threshold"))


def _validate(edges: str, node_threshold: float, prune: str, method: str) -> None:
    """Check the options that need no model, before loading one."""
    from failtrace.graph.prune import PruneSpec, check_node_threshold
    from failtrace.graph.settings import EDGE_ALGORITHMS
    from failtrace.lrp.methods import LRP_METHODS

    if edges not in EDGE_ALGORITHMS:
        raise FailtraceError(f"--edges {edges!r} is not an edge algorithm; valid: {', '.join(EDGE_ALGORITHMS)}")
    if method == "gradxinput":  # the API keeps it: the exactness tests use it as a rule-free reference
        raise FailtraceError("--method gradxinput gives the graph's final node (the last layer's output) no relevance: "
                             "the final norm is scale-invariant, so h·∇f = 0 there, and a graph is pruned and read "
                             "from that node; use attnlrp or cp-lrp (attribute --method gradxinput gives input "
                             "relevance)")
    if method not in LRP_METHODS:
        valid = ", ".join(m for m in LRP_METHODS if m != "gradxinput")
        raise FailtraceError(f"--method {method!r} is not an LRP method; valid: {valid}")
    check_node_threshold(node_threshold)
    PruneSpec.parse(prune)


def _check_outputs(dtype: str, json_path: Optional[Path], ct_json_path: Optional[Path], html_path: Optional[Path],
                   png_path: Optional[Path], svg_path: Optional[Path]) -> None:
    """The dtype and every output path, checked before the model is loaded."""
    from failtrace.models.loading import check_dtype

    check_dtype(dtype)
    check_outputs((json_path, "--json", "graph.json"), (ct_json_path, "--circuit-tracer-json", "ct.json"),
                  (html_path, "--html", "graph.html"), (png_path, "--png", "graph.png"),
                  (svg_path, "--svg", "graph.svg"), pictures_by_suffix=True)  # the writer takes the format by name


def _summary(graph: Any, pruned: Any, top_k: int) -> list[str]:
    from failtrace.attribution.record import visible
    from failtrace.graph.metrics import graph_metrics

    m = graph_metrics(pruned, top_k=top_k)
    meta = graph.metadata
    used = sorted(set(meta.get("methods_used", {}).values()))
    lines = [
        f"{graph.n_tokens} tokens, {len(graph.stages)} stages, edges by {', '.join(used) or '-'} "
        f"in {meta['seconds']['total']:.1f}s; objective {graph.objective_value:.4g}",
        f"pruned (node >= {pruned.node_threshold:g}, {pruned.spec}): {m['nodes']} nodes, {m['edges']} edges",
    ]
    cons = graph.conservation_error()
    if cons == cons:  # not NaN
        lines.append(f"conservation check (Σ_j A[j,i] vs R_i, all rows computed): max relative error {cons:.1e}")
    for key, head in (("top_paths", "paths towards the target (flow > 0"),
                      ("bottom_paths", "paths towards the contrast (flow < 0")):
        paths = m[key][:top_k]
        if paths:
            lines.append(f"{head}: its share of the prediction's relevance, in the objective's units; each node "
                         "shown, L<layer>/<position> (L<layer>.mid: after that layer's attention, --mid-nodes), is "
                         "where the path moves to another position, and the last is the prediction's node):")
        for p in paths:
            lines.append(f"  path {p['relevance']:+.4f}: {visible(p['tokens'][0])!r} [{p['input_token']}] → "
                         + " → ".join(path_hops(p)))
    return lines


def path_hops(path: dict[str, Any]) -> list[str]:
    """The nodes of a path where it moves to another token, then its final node: two distinct paths from one input
    token differ in at least one of these, so they never print alike (the full list has one node per layer)."""
    pos, nodes = path["positions"], path["nodes"]
    hops = [nodes[i] for i in range(1, len(nodes)) if pos[i] != pos[i - 1]]
    return hops if hops and hops[-1] == nodes[-1] else [*hops, nodes[-1]]


def run_graph(
    model: str | None, prompt: str | None, target: str | None, contrast: str | None, chat: bool,
    answer_prefix: str | None, layers: str | None, mid_nodes: bool, edges: str | None, prune: str | None,
    node_threshold: float | None, method: str, objective: str, json_path: Optional[Path],
    ct_json_path: Optional[Path], html_path: Optional[Path], png_path: Optional[Path], svg_path: Optional[Path],
    dtype: str | None, memory_budget: float, top_k: int, quiet: bool, allow_long: bool = False,
    position: int | None = None, store: Optional[Path] = None, case: str | None = None,
) -> int:
    """Build, prune and write the graph (of a prompt, or of a stored case's exact input); returns the exit code (0,
    or 3 after a closed-form fallback)."""
    from rich.console import Console

    from failtrace.cli import from_case

    console = Console(stderr=True, soft_wrap=True)  # notes, progress and "wrote" lines
    results = Console(soft_wrap=True)  # the summary and paths, on stdout as attribute's are (so `> file` keeps them)
    from_case.check_case_options(store, case, from_case.hand_options(prompt, target, contrast, chat, answer_prefix,
                                                                      position))
    if case is None and (not prompt or not prompt.strip()):
        raise FailtraceError("the prompt is empty; pass --prompt TEXT")
    _validate(edges or EDGES, NODE_THRESHOLD if node_threshold is None else node_threshold, prune or PRUNE, method)
    _check_outputs(dtype or "float32", json_path, ct_json_path, html_path, png_path, svg_path)
    stored = from_case.read_stored_case(store, case) if case is not None and store is not None else None
    # a setting not given is the case's analysis's (so the stored pruned graph is reproduced), else the default
    if stored is not None:
        edges, prune = edges or stored.setting("edge_method"), prune or stored.setting("prune")
        node_threshold = float(stored.setting("node_threshold")) if node_threshold is None else node_threshold
    edges, prune = edges or EDGES, prune or PRUNE
    node_threshold = NODE_THRESHOLD if node_threshold is None else node_threshold
    _validate(edges, node_threshold, prune, method)

    import failtrace
    from failtrace.graph import build_graph
    from failtrace.graph.export import save_json
    from failtrace.views import save_graph_html, save_graph_png

    def note(msg: str) -> None:
        console.print(f"note: {msg}", highlight=False, markup=False)

    text: Any = prompt
    if stored is None:
        lm = failtrace.load_model(model, dtype=dtype or "float32")
    else:
        lm = from_case.load_case_model(stored, model, dtype, note)
        text, answer_prefix, target, contrast = from_case.case_input(stored, objective)
    graph = build_graph(
        lm, text, target=target, contrast=contrast, answer_prefix=answer_prefix,
        chat=chat, objective=objective, edges=edges, method=method, layers=layers, mid_nodes=mid_nodes,
        node_threshold=node_threshold, prune=prune, memory_budget_mb=memory_budget, progress=not quiet,
        allow_long=allow_long, position=position,
        notify=lambda msg: console.print(f"note: {msg}", highlight=False),
    )
    if stored is not None:  # where the ids came from: collect rendered them with the chat template (it needs one)
        graph.metadata.update(case=from_case.provenance(stored), chat=True)
    pruned = graph.pruned
    for msg in pruned.notes:
        console.print(f"note: {msg}", highlight=False)
    if not quiet:
        for line in _summary(graph, pruned, top_k):
            results.print(line, highlight=False, markup=False)
    if stored is not None:  # a result: on stdout with the summary (also with --quiet)
        results.print(from_case.delta_check(stored, graph.objective_value, objective), highlight=False, markup=False)
    written = []
    if json_path:
        written.append(save_json(pruned, json_path))
    if ct_json_path:
        written.append(save_json(pruned, ct_json_path, variant="circuit-tracer"))
    if html_path:
        written.append(save_graph_html(pruned, html_path))
    if png_path:
        written.append(save_graph_png(pruned, png_path))
    if svg_path:
        written.append(save_graph_png(pruned, svg_path))
    for path in written:
        console.print(f"wrote {path}", highlight=False)
    fallback = graph.metadata.get("closed_form_fallback_layers") or []
    if fallback:
        console.print(
            f"warning: --edges closed-form does not cover layers {fallback} of {graph.metadata['architecture']}; "
            "they were computed with the packed algorithm (exact, slower). Use --edges auto to accept this silently.",
            highlight=False, markup=False)
        return EXIT_FALLBACK
    return 0


def register(app: typer.Typer) -> None:
    """Add the ``graph`` command to the typer app."""
    @app.command("graph")
    def graph_cmd(
        prompt: Optional[str] = opts.PROMPT,
        target: Optional[str] = opts.TARGET,
        contrast: Optional[str] = opts.CONTRAST,
        model: Optional[str] = opts.MODEL,
        chat: bool = opts.CHAT,
        answer_prefix: Optional[str] = opts.ANSWER_PREFIX,
        layers: Optional[str] = typer.Option(None, "--layers",
                                             help="Contiguous layer range whose incoming edges are computed, e.g. "
                                                  "'20-29' or '5' (default: all layers)."),
        mid_nodes: bool = typer.Option(False, "--mid-nodes",
                                       help="Add a node after each attention block (before the MLP)."),
        edges: Optional[str] = typer.Option(None, "--edges",
                                            help="Edge algorithm: auto (closed form where covered, else packed; the "
                                                 "default) | naive | packed | closed-form."),
        prune: Optional[str] = typer.Option(None, "--prune",
                                            help="Edge pruning: cumulative:P (0 < P <= 1, mass per layer "
                                                 "transition; default cumulative:0.85) or global:TAU (|A| > "
                                                 "TAU·|R_final|)."),
        node_threshold: Optional[float] = typer.Option(None, "--node-threshold",
                                                       help="Drop nodes whose normalised |R| is below this (0..1; "
                                                            "default 0.01)."),
        method: str = typer.Option("attnlrp", "--method", help="LRP rule: attnlrp | cp-lrp"),
        objective: str = typer.Option("logit_diff", "--objective",
                                      help="logit_diff | max_logit | topk_mean | vocab_mean"),
        json_path: Optional[Path] = typer.Option(None, "--json", help="Write the pruned graph (failtrace schema)."),
        ct_json_path: Optional[Path] = typer.Option(None, "--circuit-tracer-json",
                                                    help="Write the circuit-tracer-style nodes/links JSON."),
        html_path: Optional[Path] = typer.Option(None, "--html", help="Write the interactive self-contained HTML."),
        png_path: Optional[Path] = typer.Option(None, "--png", help="Write the layered picture as PNG."),
        svg_path: Optional[Path] = typer.Option(None, "--svg", help="Write the layered picture as SVG."),
        dtype: Optional[str] = opts.DTYPE,
        memory_budget: float = typer.Option(1024.0, "--memory-budget", callback=opts.finite(0.0, open_min=True),
                                            help="MB for one block of edge computation (packed batch, closed-form "
                                                 "row chunks)."),
        top_k: int = typer.Option(5, "--top-k", callback=opts.count(1),
                                  help="Strongest input→final paths to print (at least 1)."),
        quiet: bool = typer.Option(False, "--quiet", "-q",
                                   help="Print only warnings, written files and (with --case) the Δℓ check."),
        allow_long: bool = opts.ALLOW_LONG,
        position: Optional[int] = opts.POSITION,
        store: Optional[Path] = opts.CASE_STORE,
        case: Optional[str] = opts.STORED_CASE,
    ) -> None:
        """Attribution graph: relevance flow between hidden states (layer × token) for TARGET vs CONTRAST (or of a
        stored case again: --store S --case ID).

        Exit code 3: written, but --edges closed-form fell back to packed for some layers.
        """
        code = run_graph(model, prompt, target, contrast, chat, answer_prefix, layers, mid_nodes, edges, prune,
                         node_threshold, method, objective, json_path, ct_json_path, html_path, png_path,
                         svg_path, dtype, memory_budget, top_k, quiet, allow_long, position, store, case)
        if code:
            raise SystemExit(code)
