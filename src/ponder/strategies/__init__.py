"""ponder.strategies"""
