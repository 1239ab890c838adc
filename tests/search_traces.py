"""Reading a search Result's trace in tests: nodes by depth, and the response a node ends."""

from ponder.strategies.search.tree import join_steps


def by_depth(result):
    out = {}
    for node in result.trace["nodes"][1:]:
        out.setdefault(node["depth"], []).append(node)
    return out


def response_of(result, node_id):
    nodes = {n["id"]: n for n in result.trace["nodes"]}
    path = []
    while node_id:
        path.append(nodes[node_id])
        node_id = nodes[node_id]["parent"]
    return join_steps([(n["text"], n["finish"]) for n in reversed(path)], "\n\n")
