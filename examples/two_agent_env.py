"""A two-agent text env in about 30 lines: a speaker sees a secret colour, a listener must name it.

`TextAECEnv` does the PettingZoo bookkeeping (agents, rewards, terminations, spaces, seeding, parsing, error
observations); an env only says what each agent is told at the start (`_start`) and what an action does
(`_turn`). Run it: ``python examples/two_agent_env.py``.
"""

from __future__ import annotations

import numpy as np

import turngym
from turngym.envs.multi import Action, TextAECEnv

COLOURS = ("red", "green", "blue", "yellow")


class SpeakerListener(TextAECEnv):
    """``speaker_0`` sees a secret colour and messages ``listener_0``, who must name it (team reward)."""

    possible_agents = ["speaker_0", "listener_0"]
    metadata = {"name": "speaker_listener_v0", "render_modes": ["ansi"], "is_parallelizable": False}

    def _start(self, rng: np.random.Generator, options: dict | None) -> dict:
        self.secret = COLOURS[int(rng.integers(len(COLOURS)))]
        self.send("speaker_0", f"The colour is {self.secret}. Tell your partner in <answer>...</answer>.")
        self.send("listener_0", f"Your partner names one of {COLOURS}. Repeat it in <answer>...</answer>.")
        return {"gold_answer": self.secret}

    def _turn(self, agent: str, action: Action) -> None:
        if action.answer is None:  # a bad action is an error message, and the same agent acts again
            return self.reject(agent, "put your message inside <answer>...</answer>")
        if agent == "speaker_0":
            self.send("listener_0", f"Your partner says: {action.answer}", name=agent)
            self.agent_selection = "listener_0"
        else:
            won = float(action.answer.strip().lower() == self.secret)
            self.end({a: won for a in self.agents}, final_answer=action.answer)

    def _expert(self, agent: str, rng: np.random.Generator, noise: float) -> str:
        heard = " ".join(m["content"] for m in self.history(agent) if m.get("name") == "speaker_0")
        word = self.secret if agent == "speaker_0" else next((c for c in COLOURS if c in heard), "?")
        return self.parsers[agent].format(answer=word)


turngym.register("example/SpeakerListener-v0", SpeakerListener, overwrite=True)


def main() -> None:
    from pettingzoo.test import api_test

    env = turngym.make("example/SpeakerListener-v0", render_mode="ansi")
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    for agent in env.agent_iter():
        _obs, reward, terminated, truncated, info = env.last()
        if terminated or truncated:
            print(f"{agent}: reward {reward}, success {info['success']}")
            env.step(None)
        else:
            env.step(env.expert_action(agent, rng))
    print(env.render())
    api_test(turngym.make("example/SpeakerListener-v0"), num_cycles=50)


if __name__ == "__main__":
    main()
