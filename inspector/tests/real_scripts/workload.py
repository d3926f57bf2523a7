import gc, hashlib, json, re, threading, queue
from decimal import Decimal, getcontext

class Node:
    def __init__(self, v):
        self.v = v
        self.peer = None

def churn(n, out):
    nodes = []
    for i in range(20000):
        a, b = Node(i), Node(n)
        a.peer, b.peer = b, a          # cycles only the collector frees
        nodes.append(a)
        if len(nodes) > 500:
            nodes = nodes[250:]
    words = re.findall(r"[a-z]+\d", " ".join("w%d" % (i * n) for i in range(20000)))
    out.put((n, len(words), sum(x.v for x in nodes)))

q = queue.Queue()
ts = [threading.Thread(target=churn, args=(n, q)) for n in range(4)]
for t in ts: t.start()
for t in ts: t.join()
print(sorted(q.get() for _ in ts))
print("collected something:", gc.collect() >= 0)
getcontext().prec = 400
s = sum(Decimal(1) / Decimal(k * k) for k in range(1, 3000))
print("basel", str(s)[:60])
doc = {"k%05d" % i: [i, str(i) * 3, {"x": i % 7}] for i in range(40000)}
text = json.dumps(doc, sort_keys=True)
print("json", len(text), hashlib.sha256(text.encode()).hexdigest())
print("equal", json.loads(text) == doc)
