"""Forces kafka-python 3.0.12's metadata race: subscribe() lands while a
MetadataRequest sent with topics=[] is in flight. Prints how many of 10
records the consumer reads in 15 s.

    PYTHONPATH=KAFKA_PYTHON_SRC python race.py BOOTSTRAP [CONFTEST_DIR]

With CONFTEST_DIR (this directory), conftest.py's fix is applied first."""
import sys, time, uuid, threading
from kafka import KafkaProducer, KafkaConsumer
from kafka.cluster import ClusterMetadata
boot = sys.argv[1]
if len(sys.argv) > 2:
    sys.path.insert(0, sys.argv[2]); import conftest  # noqa: F401  applies the fix
topic = "race-" + uuid.uuid4().hex[:8]
p = KafkaProducer(bootstrap_servers=boot)
for i in range(10): p.send(topic, b"m%d" % i)
p.flush(); p.close()
c = KafkaConsumer(bootstrap_servers=boot, group_id=None, auto_offset_reset="earliest",
                  consumer_timeout_ms=15000)
time.sleep(1)  # the constructor's own refreshes are done
cluster = c._cluster
orig = cluster.update_metadata
fired = threading.Event()
def racing(metadata):
    if not fired.is_set() and not metadata.topics:
        c.subscribe([topic])              # lands while the request is in flight
        fired.set()
    return orig(metadata)
cluster.update_metadata = racing
cluster.request_update()                  # a refresh with topics=[]
fired.wait(5)
t0 = time.time(); got = [m.value for m in c]
print(f"race fired={fired.is_set()} received {len(got)} of 10 in {time.time()-t0:.1f} s")
c.close()
