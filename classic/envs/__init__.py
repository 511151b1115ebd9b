"""The seed article's example tasks as gymnasium environments, registered on import.

Each module defines its env class; the ids are registered here so `gym.make("rlbook/Maze-v0")` works after
`import classic.envs` (which `classic.common.check_env_id` does for you)."""

from gymnasium.envs.registration import register, registry


def _register(env_id: str, entry_point: str, **kwargs) -> None:
    if env_id not in registry:
        register(id=env_id, entry_point=entry_point, **kwargs)


# Registrations go below, one line per environment, e.g.
# _register("rlbook/Maze-v0", "classic.envs.maze:MazeEnv")
_register("rlbook/Maze-v0", "classic.envs.maze:MazeEnv", max_episode_steps=1000)
_register("rlbook/Snake-v0", "classic.envs.snake:SnakeEnv")
_register("rlbook/Checkers-v0", "classic.envs.checkers:CheckersEnv", max_episode_steps=200)
_register("rlbook/Navigation-v0", "classic.envs.navigation:NavigationEnv", max_episode_steps=100)
_register(
    "rlbook/NavigationContinuous-v0",
    "classic.envs.navigation:NavigationEnv",
    max_episode_steps=100,
    kwargs={"continuous": True},
)
_register("rlbook/Catch-v0", "classic.envs.catch:CatchEnv")
_register("rlbook/Trading-v0", "classic.envs.trading:TradingEnv")
