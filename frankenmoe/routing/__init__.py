"""Router statistics and router fitting."""
