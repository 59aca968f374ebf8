"""Example applications of came_grad."""
