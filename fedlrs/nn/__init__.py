"""LRS for neural networks: ``theta_i = theta_0 + U w_i + b_i`` over chosen parameters of a torch module."""
