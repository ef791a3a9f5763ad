"""``hecnn demo``: the README's main job."""
