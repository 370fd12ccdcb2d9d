"""Stop strings over a growing text, holding back a tail that might still become a stop string."""

from __future__ import annotations


class StopChecker:
    def __init__(self, stops: list[str], include_stop: bool = False) -> None:
        self.stops, self.include_stop = stops, include_stop
        self.text = ""
        self._longest = max((len(s) for s in stops), default=0)

    def add(self, delta: str) -> str | None:
        """Append ``delta``; returns the stop string that matched (the text is cut there), else None."""
        if not delta:
            return None
        searched_from = max(len(self.text) - self._longest + 1, 0)
        self.text += delta
        found = [(self.text.find(s, searched_from), s) for s in self.stops]
        found = [(i, s) for i, s in found if i >= 0]
        if not found:
            return None
        index, stop = min(found)
        self.text = self.text[: index + len(stop) if self.include_stop else index]
        return stop

    def visible_text(self, finished: bool) -> str:
        """The text safe to show now: while running, a tail that begins a stop string is withheld."""
        if finished or not self.stops:
            return self.text
        for k in range(min(self._longest - 1, len(self.text)), 0, -1):
            tail = self.text[-k:]
            if any(s.startswith(tail) for s in self.stops):
                return self.text[:-k]
        return self.text
