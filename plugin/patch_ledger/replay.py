"""A run's event log replayed onto its documents.

The log is the run's write-ahead log (store.py): a flush appends its events, fsynced, before
it replaces the files, so a crash between the two leaves files that lag the log by the steps
of that last batch. `catch_up` brings documents up to the log: `RunStore.load` uses it to
repair the files when a run resumes, and the checker to judge a run as its log says it is, so
the state a crash leaves passes `ledger check` as it stands (issue 5), not only after a resume.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from patch_ledger import machine

Doc = dict[str, Any]
Key = tuple[str, str]  # (kind, id)

STEP_FIELDS = ("from", "to", "at", "actor", "reason")


def catch_up(docs: dict[Key, Doc], events: Sequence[Mapping[str, Any]],
             may_create: Callable[[Key], bool] = lambda key: True) -> set[Key]:
    """Bring `docs` (changed in place) up to `events`, the run's log, in order: for each
    entity, the events after the last step its document holds are applied (a new document,
    a step appended, fields set; a field set to None is removed). A step that does not
    continue its document (another state, or no transition of its machine) is not applied,
    nor anything after it for that entity: the checker reports the mismatch. A document
    missing from `docs` is made from its creation event when `may_create` allows. The keys
    of the documents changed."""
    start = _first_unheld(docs, events)
    changed: set[Key] = set()
    stuck: set[Key] = set()
    for i, event in enumerate(events):
        key = (event.get("entity", ""), event.get("id", ""))
        if i < start.get(key, 0) or key in stuck:
            continue
        if event.get("type") == "update" and key in docs:
            changed |= {key} if _set_fields(docs[key], event.get("data") or {}) else set()
        elif event.get("type") == "transition":
            if _apply_step(docs, key, event, may_create):
                changed.add(key)
            else:
                stuck.add(key)
    return changed


def _first_unheld(docs: dict[Key, Doc], events: Sequence[Mapping[str, Any]]) -> dict[Key, int]:
    """For each entity with a document, the index just after the last event of a step that
    document holds: what came before is in the document already."""
    held = {key: {_entry_key(h) for h in doc.get("history", ())} for key, doc in docs.items()}
    start: dict[Key, int] = {}
    for i, event in enumerate(events):
        key = (event.get("entity", ""), event.get("id", ""))
        if event.get("type") == "transition" and _entry_key(event) in held.get(key, ()):
            start[key] = i + 1
    return start


def _apply_step(docs: dict[Key, Doc], key: Key, event: Mapping[str, Any], may_create: Callable[[Key], bool]) -> bool:
    kind, source, target = key[0], event.get("from"), event.get("to")
    if kind not in machine.MACHINE_KINDS:
        return False
    doc = docs.get(key)
    if doc is None:
        if source is not None or not may_create(key):
            return False
        docs[key] = machine.new_document(kind, key[1], event["actor"], event["reason"], event["at"], event.get("data"))
        return True
    if doc.get("state") != source or not machine.load(kind).is_legal(source, target):
        return False
    _set_fields(doc, event.get("data") or {})
    doc["history"] = [*doc["history"], {k: event[k] for k in STEP_FIELDS}]
    doc["state"] = target
    return True


def _set_fields(doc: Doc, data: Mapping[str, Any]) -> bool:
    """Fields an event set (None: removed) into `doc`; whether that changed it."""
    changed = False
    for field, value in data.items():
        if value is None and field in doc:
            del doc[field]
            changed = True
        elif value is not None and doc.get(field) != value:
            doc[field] = value
            changed = True
    return changed


def _entry_key(step: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(step.get(k) for k in STEP_FIELDS)
