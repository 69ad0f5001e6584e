"""``multi/SealedBid-v0``: first-price sealed-bid auctions over several rounds (Parallel API, competitive).

Each round one item is sold. Every bidder privately learns its value for the item (an integer 1..100) and all
bidders bid at the same time, inside ``<answer>...</answer>`` (``<answer>37</answer>``). A bid is an integer
from 0 to the bidder's value (a budget rule: nobody can bid more than the item is worth to them). The highest
bid wins (ties broken by the env's RNG) and the winner pays its bid, earning ``value - bid``; the others earn
nothing. After each round everyone sees all bids and who won.

Verifiable outcome: a bidder's outcome is its total earnings divided by the sum of its values over all rounds
(a float in [0, 1]); each round's earnings are paid as reward when the round closes, so the episode return
equals the outcome. ``success`` is earning strictly more than every other bidder. A malformed or illegal bid
(not an integer, negative, above the value) is no bid for that round, and the bidder is told why.

The scripted bidder bids half its value, the equilibrium strategy of the two-bidder first-price auction with
uniform private values.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from turngym.envs.multi.core import Action, TextParallelEnv
from turngym.errors import ConfigError

INSTRUCTIONS = (
    "You are {agent}, bidding in {rounds} sealed-bid auctions against {others}. Each round one item is sold; "
    "you learn your private value for it (1-100 points). All bidders bid at the same time. The highest bid wins "
    "and pays its bid, earning value minus bid; the others earn nothing. Bid a whole number from 0 to your value, "
    "inside <answer>...</answer>, for example <answer>37</answer>. Your score is your total earnings."
)
_INT_RE = re.compile(r"^\s*(-?\d+)\s*$")


def parse_bid(text: str | None, value: int) -> tuple[int | None, str | None]:
    """``(bid, None)`` for a legal bid, else ``(None, reason)``."""
    if text is None:
        return None, "no bid found: put a whole number inside <answer>...</answer>, e.g. <answer>37</answer>"
    m = _INT_RE.match(text)
    if m is None:
        return None, f"bid {text[:40]!r} is not a whole number; write e.g. <answer>37</answer>"
    b = int(m.group(1))
    if not 0 <= b <= value:
        return None, f"bid {b} is outside 0..{value} (your value this round)"
    return b, None


class SealedBidEnv(TextParallelEnv):
    """Repeated first-price sealed-bid auctions with private values (simultaneous moves).

    Args:
        rounds: Number of auctions (items) per episode.
        num_bidders: Number of bidders (>= 2).
        max_value: Values are drawn uniformly from ``1..max_value``.
        **kwargs: Passed to `TextParallelEnv` (``parser``, ``max_cycles``, ``render_mode``, ...).
    """

    metadata = {"name": "sealedbid_v0", "render_modes": ["ansi"], "is_parallelizable": True}
    parser_name = "tags"
    default_expert_noise = 0.1

    def __init__(self, *, rounds: int = 3, num_bidders: int = 2, max_value: int = 100, **kwargs: Any):
        if not isinstance(rounds, int) or rounds < 1:
            raise ConfigError(f"rounds must be a positive int, got {rounds!r}.")
        if not isinstance(num_bidders, int) or num_bidders < 2:
            raise ConfigError(f"num_bidders must be an int >= 2, got {num_bidders!r}.")
        if not isinstance(max_value, int) or max_value < 1:
            raise ConfigError(f"max_value must be a positive int, got {max_value!r}.")
        self.rounds = rounds
        self.max_value = max_value
        self.possible_agents = [f"bidder_{i}" for i in range(num_bidders)]
        kwargs.setdefault("max_cycles", rounds)
        if kwargs["max_cycles"] < rounds:
            raise ConfigError(
                f"max_cycles={kwargs['max_cycles']} is below rounds={rounds}; the game could not finish."
            )
        super().__init__(**kwargs)

    def _start(self, rng: np.random.Generator, options: dict[str, Any] | None) -> dict[str, Any]:
        # PettingZoo's api_test resets with options={'options': 1}: that key is accepted and ignored
        if options and set(options) - {"options"}:
            raise ConfigError(f"SealedBid reset options: unknown keys {sorted(options)}; it takes none.")
        n = len(self.possible_agents)
        vals = rng.integers(1, self.max_value + 1, size=(self.rounds, n))
        self.values = {a: [int(v) for v in vals[:, i]] for i, a in enumerate(self.possible_agents)}
        self.earnings = {a: 0 for a in self.possible_agents}
        self.bids: list[dict[str, int | None]] = []
        self.winners: list[str | None] = []
        for a in self.possible_agents:
            others = ", ".join(o for o in self.possible_agents if o != a)
            self.send(a, INSTRUCTIONS.format(agent=a, rounds=self.rounds, others=others), role="system")
            self.send(
                a, f"Round 1 of {self.rounds}: your value for the item is {self.values[a][0]}. Your bid?"
            )
        return {
            "id": "sealedbid/" + "/".join(",".join(map(str, self.values[a])) for a in self.possible_agents),
            "rounds": self.rounds,
            "decisive_turns": list(range(self.rounds)),
        }

    def _round(self, actions: dict[str, Action]) -> None:
        r = self.round - 1  # index of the round being played
        bids: dict[str, int | None] = {}
        for a, act in actions.items():
            if act.calls:
                self.run_tools(a, act.calls)  # no tools here: each call comes back as an error message
            b, reason = parse_bid(act.answer, self.values[a][r])
            bids[a] = b
            if b is None:
                self.reject(a, f"{reason}. You made no bid in round {r + 1}.", act.errors)
        valid = {a: b for a, b in bids.items() if b is not None}
        winner = None
        if valid:
            top = max(valid.values())
            tied = sorted(a for a, b in valid.items() if b == top)
            winner = tied[int(self.np_random.integers(0, len(tied)))] if len(tied) > 1 else tied[0]
            gain = self.values[winner][r] - top
            self.earnings[winner] += gain
            self.give(winner, gain / sum(self.values[winner]))
        self.bids.append(bids)
        self.winners.append(winner)
        shown = ", ".join(f"{a} {'no bid' if b is None else b}" for a, b in bids.items())
        for a in self.agents:
            if winner is None:
                result = "Nobody made a valid bid; the item was not sold."
            elif winner == a:
                result = f"You won and earned {self.values[a][r] - bids[a]} (value {self.values[a][r]})."
            else:
                result = f"{winner} won."
            nxt = (
                f" Round {r + 2} of {self.rounds}: your value for the item is {self.values[a][r + 1]}. Your bid?"
                if r + 1 < self.rounds
                else f" The auctions are over; you earned {self.earnings[a]} in total."
            )
            self.send(a, f"Round {r + 1} bids: {shown}. {result}{nxt}")
        if r + 1 == self.rounds:
            best = max(self.earnings.values())
            leaders = [a for a, e in self.earnings.items() if e == best]
            self.end(
                None,  # the returns already equal the outcomes (earnings / total value)
                success={a: len(leaders) == 1 and a in leaders for a in self.agents},
                final_answer=None,
                stop_reason="auctions_over",
                extra={
                    a: {
                        "earnings": dict(self.earnings),
                        "values": self.values,
                        "bids": self.bids,
                        "winners": self.winners,
                    }
                    for a in self.agents
                },
            )

    def _expert(self, agent: str, rng: np.random.Generator, noise: float) -> str:
        """Bid half the value (rounded down); noise: a malformed bid or a uniformly random legal bid."""
        parser = self.parsers[agent]
        value = self.values[agent][self.round]
        if noise > 0 and rng.random() < noise:
            if rng.random() < 0.5:
                return f"My bid is {value // 2}."
            return parser.format(answer=str(int(rng.integers(0, value + 1))))
        return parser.format(answer=str(value // 2))


def make_env(api: str = "parallel", **kwargs: Any) -> Any:
    """Registry entry point: the parallel env (``api="parallel"``) or its AEC view (``api="aec"``)."""
    from turngym.envs.multi import to_api

    return to_api(SealedBidEnv(**kwargs), api)
