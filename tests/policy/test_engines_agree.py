"""The benchmark is honest: the index, Cedar and casbin decide generated requests alike."""

from __future__ import annotations

from collections import Counter

from bench.policy import CasbinEngine, CedarEngine, asks, compile_index, engine_decide, generate


class TestEnginesAgree:
    def test_three_engines_give_the_same_decisions(self) -> None:
        scenario = generate(agreements=60, departments=8, seed=3)
        policy = compile_index(scenario)
        cedar = CedarEngine(scenario)
        casbin_engine = CasbinEngine(scenario)
        effects: Counter[str] = Counter()
        for number, ask in enumerate(asks(scenario, 300, fields_per_ask=4, seed=5)):
            ours = engine_decide(policy, ask)
            assert cedar.decide(ask) == ours, ask
            # casbin scans every policy row per field (milliseconds each): a third of them.
            if number % 3 == 0:
                assert casbin_engine.decide(ask) == ours, ask
            effects.update(ours.values())
        # The generated requests exercise both outcomes, not just default deny.
        assert effects["permit"] > 150
        assert effects["deny"] > 150
