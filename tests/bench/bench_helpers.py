"""Settings shared by the benchmark tests (a module of its own: ``from conftest import`` would pick whichever
``conftest`` pytest imported first when several test folders run together)."""

#: SFT settings of the end-to-end tests (tiny: the policy is barely warm-started; enough to exercise every path). No LM
#: pretraining: the benchmarks' own default (400 steps) would cost each test that trains its warm start ~90 s.
TINY_SFT = {"pretrain_steps": 0, "sft_steps": 3, "sft_episodes": 8, "max_new_tokens": 24}
