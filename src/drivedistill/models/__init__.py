"""Neural components: backbones, students (deployable planners), teachers, latent action model."""
