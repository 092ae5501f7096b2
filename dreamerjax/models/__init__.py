"""The networks and world models: layers, distributions, dynamics (RSSM, transformer, SSM),
heads, the VAE and MDN parts, open-loop prediction."""
