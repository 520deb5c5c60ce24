"""Recipes: named experiments built from stages, chosen by config.recipe.

A recipe is a function `run(ctx) -> RecipeOutput`: it reads the task data
and the model list from the context (experiment/setup.py), trains its
stages through experiment/stage.py, and declares the comparisons it
reports (for each PGR: supervisor, student and ceiling stage). It knows
nothing about meshes, files or caching.
"""
from w2s_jax.core.errors import UsageError
from w2s_jax.experiment.recipes import (bootstrap, cosupervision, ensemble, prompting,
                                        saliency, synthetic, w2s)

RECIPES = {"w2s": w2s.run, "bootstrap": bootstrap.run, "saliency": saliency.run,
           "synthetic": synthetic.run, "ensemble": ensemble.run,
           "cosupervision": cosupervision.run, "prompting": prompting.run}


def get_recipe(name: str):
    if name not in RECIPES:
        raise UsageError(f"config.recipe={name!r} is not valid; choose one "
                         f"of: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]
