"""Small helpers shared by test modules."""
from __future__ import annotations


def count_calls(monkeypatch, owner, name: str) -> list[str]:
    """The case ids of every later call of `owner.name` (which still runs): what a cache hit must avoid."""
    calls = []
    real = getattr(owner, name)

    def counting(ref, *args, **kwargs):
        calls.append(ref.case_id)
        return real(ref, *args, **kwargs)

    monkeypatch.setattr(owner, name, counting)
    return calls
