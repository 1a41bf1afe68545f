"""What a :class:`~fuse3d.pipeline.Run` reports about itself: its summary (JSON) and its notebook HTML."""
from __future__ import annotations

import html

from .editing import edit_summary

def run_summary(run) -> dict:
    """What ran and what came out, JSON-serialisable (used by the CLI and the views)."""
    out = {"model": run.model_name, "model_description": getattr(run.trellis, "description", ""),
           "model_source": run.trellis.source, "global": run.global_condition.name,
           "locals": [c.name for c in run.local_conditions], "params": run.params.as_dict(),
           "defaults": run.fuse3d.defaults.as_dict()}
    prepared = [c.prepare() for c in run.local_conditions]
    out["selected_patches"] = [int(p.selected.sum()) for p in prepared]      # |D_k| per local image
    out["foreground_patches"] = [int(p.foreground.sum()) for p in prepared]  # its object's patches
    # what is computed or cached is reported (a cached stage is read, never computed)
    if run._available("structure"):
        out["voxels"] = int(len(run.structure))
        out["cells"] = int(len(run.cells))
    if all(run._available("refine", k) for k in range(run.K)):
        out["aligned_cells"] = [int(run.refined_mask(k).sum()) for k in range(run.K)]
    if run._available("reverse_alignment"):
        out["unaligned_cells"] = int(run.unaligned.sum())
        out["global_tokens"] = int(len(run.global_patches))
    if run._available("enhancement"):
        out["lambdas"] = run.lambdas
    if run.base is not None:  # an edit of a given asset
        out.update(edit_summary(run))
    return out


def run_html(run) -> str:
    """The run as a notebook shows it: model, conditions and the stage table (status, key, shapes)."""
    seconds = run.timings()

    def row(r):
        name = r["stage"] if len(run.indices(r["stage"])) == 1 else f"{r['stage']} [{r['index']}]"
        shapes = ", ".join(f"{k} {v}" for k, v in r["tensors"].items())
        took = seconds.get(name.replace(" [", "["))
        return (f"<tr><td>{name}</td><td>{html.escape(r['status'])}</td>"
                f"<td style='text-align:right'>{'' if took is None else f'{took:.2f} s'}</td><td><code>{r['key']}</code></td>"
                f"<td>{html.escape(shapes)}</td></tr>")

    rows = "".join(row(r) for r in run.stages())
    desc = getattr(run.trellis, "description", "")
    head = (f"<b>Fuse3D run</b> — model <b>{html.escape(run.model_name)}</b>"
            f"{' (' + html.escape(desc) + ')' if desc else ''}<br>"
            f"global: {html.escape(run.global_condition.name)}; locals: "
            f"{html.escape(', '.join(c.name for c in run.local_conditions))}"
            + (f"; edits {html.escape(run.base.name)}" if run.base is not None else ""))
    return (f"<div>{head}<table><thead><tr><th>stage</th><th>status</th><th>time</th><th>key</th><th>tensors</th></tr></thead>"
            f"<tbody>{rows}</tbody></table></div>")
