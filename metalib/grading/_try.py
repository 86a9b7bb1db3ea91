import torch
from metalib import protonet
from metalib.grading.question import Question, Mistake, case
from metalib.grading.probes import proto_features

def distance_inputs(tasks, queries, n_way, dim, seed, dtype="float64"):
    return {"query_features": proto_features((tasks, queries, dim), seed, dtype),
            "protos": proto_features((tasks, n_way, dim), seed + 1, dtype)}

def reference(query_features, protos):
    return -protonet.logits(query_features, protos, "euclidean")

Q2 = Question("q2", "squared_distances", 2, distance_inputs, reference=reference,
    visible=(case("2 tasks", tasks=2, queries=3, n_way=4, dim=5, seed=0),
             case("float32", tasks=1, queries=3, n_way=2, dim=5, seed=3, dtype="float32")),
    mistakes=(Mistake("this is the distance ‖q − c‖, not its square", lambda q, c: reference(q, c).sqrt()),
              Mistake("the sign is flipped", lambda q, c: -reference(q, c))),
    hints=lambda s: {(s["tasks"], s["n_way"], s["queries"]): "the last two axes are swapped"},
    what="the distances", rule="Entry [t, p, n] is ‖q_p − c_n‖²")
