"""Where the stack keeps its state in Consul KV: the one place that names the keys. Each part
owns a prefix (and its ACL token may write only there, see catalog.acl_setup)."""

GATEKEEPER = "gatekeeper/"                     # gatekeeper's prefix; the operator writes here too
VERDICTS = GATEKEEPER + "verdicts/"            # <instance id>: the verdict of its container
POLICIES = GATEKEEPER + "policies/"            # <service>: the routing policy
DEFAULT_TESTS = GATEKEEPER + "tests/"          # <service>: the default test image
RETESTS = GATEKEEPER + "retest/"               # <instance id>: a retest request
HISTORY = GATEKEEPER + "history/"              # <service>/<ns time>: promotions, aborts, ...
ANALYSIS = GATEKEEPER + "analysis/"            # <service>: where its progressive analysis stands
SCALING = GATEKEEPER + "scaling/"              # <service>: its replica count's last change, and why
HEALING = GATEKEEPER + "healing/"              # <instance id>: restarts tried on it, given up or not
GATES = GATEKEEPER + "gates/"                  # <node>/<instance id>: the gate that node's registrator applies
ACTIONS = GATEKEEPER + "actions/"              # <node>/<instance id>: a stop, start, remove, restart or kill for that node
MARKERS = GATEKEEPER + "markers/"                # <node>/<instance id>: the gate marker that node's registrator writes into a Swarm task
ROLLBACKS = GATEKEEPER + "rollbacks/"          # <service>: a rollback waiting for the drained containers it started
LEADER = GATEKEEPER + "leader"                 # the leader lock
SCHEMA = GATEKEEPER + "schema"                 # the layout's version (catalog.schema): every part reads it

REGISTRATOR = "registrator/"
REJECTED = REGISTRATOR + "rejected/"           # <container name>: why it was not registered

PROXY_RELOADER = "proxy-reloader/"
SERVED = PROXY_RELOADER + "served/"            # <proxy id>/<service>: what that proxy's nginx serves

CERTIFICATES = "certificates/"                 # TLS certificates every proxy serves (catalog.certificates)
CERTIFICATE_CHAINS = CERTIFICATES + "chains/"  # <name>: {"cert": PEM chain, "source": ..., "added": ...}
CERTIFICATE_KEYS = CERTIFICATES + "keys/"      # <name>: the PEM private key (proxy-reloader and operator only)
ACME = CERTIFICATES + "acme/"                  # proxy-reloader's ACME issuer (proxy_reloader.acme_issuer)
ACME_ACCOUNT = ACME + "account"                # {"directory", "key": PEM}: the account all issuers share
ACME_LEADER = ACME + "leader"                  # the issuer's leader lock: one issuer orders at a time
ACME_ORDERS = ACME + "orders/"                 # <host>: the order under way ({"url", "key", "tokens"}), resumed by a new leader
ACME_CHALLENGES = ACME + "challenges/"         # <token>: the HTTP-01 key authorization every proxy answers with
ACME_RENEW = ACME + "renew/"                   # <host>: a renewal asked for with proxy-reloader cert renew
