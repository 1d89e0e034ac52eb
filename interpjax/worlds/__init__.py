"""Small worlds whose models we train ourselves (Othello, grid-world robot programs, modular arithmetic)."""
