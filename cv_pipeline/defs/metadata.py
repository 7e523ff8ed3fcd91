"""Reading what upstream assets recorded, and shaping metadata for the UI."""


from typing import Any

import dagster as dg


def latest_metadata(context, asset_key: str | dg.AssetKey, required: bool = True) -> dict[str, Any]:
    """Plain values of the latest materialization's metadata of an asset; if there is none, fails
    clearly (or, with `required=False`, returns {})."""
    key = dg.AssetKey.from_coercible(asset_key)
    event = context.instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        if not required:
            return {}
        raise dg.Failure(f"{key.to_user_string()} has not been materialized yet; materialize it first")
    return {name: value.value for name, value in event.asset_materialization.metadata.items()}


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def cell(value):
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def task_asset(task: str, stage: str, upstream: str, description: str, group: str = "deployment",
               kinds: frozenset = frozenset({"mlflow"})):
    """The decorator of a stage of a task's road: asset `<task>_<stage>` after `<task>_<upstream>`,
    tagged with its task; it follows its upstream eagerly (a retraining carries the whole road)."""
    from cv_pipeline.defs.automation import follows_upstream

    return dg.asset(name=f"{task}_{stage}", deps=[dg.AssetKey(f"{task}_{upstream}")], group_name=group,
                    kinds=set(kinds), tags={"task": task}, description=description,
                    automation_condition=follows_upstream())
