"""A test strategy, ``toy_repeat``: proposes every model-wise config twice, to prove the tuner never re-runs one."""

from ilit import Strategy


class RepeatStrategy(Strategy):
    def configs(self):
        for cfg in self.space.model_wise_configs():
            yield cfg
            yield cfg
