"""ponder.tasks"""
