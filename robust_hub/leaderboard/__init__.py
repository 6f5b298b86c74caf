"""A verified leaderboard: a store of requests and signed results, a runner, and a static page rendered from them."""
