"""Recipes: the teacher side of a distillation method (annotations, latent actions, teacher models), one module each."""
