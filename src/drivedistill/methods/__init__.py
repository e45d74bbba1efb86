"""Training methods: what a student is trained with (imitation, vlm_ad, latent_vla, evodrive)."""
