"""The toy world: a synthetic world of coloured shapes with exact ground truth (see data/WORLD_CARD.md)."""
from .world import *  # noqa: F401,F403
from .world import Scene, WorldObject, sample_scene, sample_scenes, vocabulary, is_held_out, random_drop, with_plain_red
from .checker import Reading, check_scene, match_readings, read_image
