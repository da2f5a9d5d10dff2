"""codegpt's model side: the GPT-2 network, training, checkpoints, planning, generation."""
