// libtorch's c10d (the engine under PyTorch DDP and FSDP) behind a C ABI: TCPStore rendezvous and a
// Gloo (host memory) or NCCL (GPU memory) process group with the collectives data-parallel
// training needs. tch wraps none of it.
//
// NCCL is compiled in only where the build found the CUDA runtime's and NCCL's headers (the
// nvidia-* wheels a CUDA torch depends on): LLAVA_NCCL. ProcessGroupNCCL itself is libtorch_cuda's.
//
// Gloo's own headers are not in the torch wheel; ProcessGroupGloo.hpp is compiled against the
// headers of the gloo commit torch 2.11.0 was built with, vendored in third_party/gloo (see its
// README for why and how that commit was established). Only out-of-line c10d code and pointers to
// gloo objects are used here, so nothing depends on gloo's class layouts.
//
// Tensors cross as tch's `at::Tensor *`. Every function returns NULL on success or a malloc'd
// error message (free it with `llava_dist_free_message`); no C++ exception crosses into Rust.

#include <llava_ffi.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef LLAVA_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace {

// Every rank counts up `heartbeat/<rank>` in the store from a thread of its own, over a store
// client of its own, so that when a collective fails the survivors can tell which rank stopped.
struct Heartbeat {
    std::atomic<bool> stop{false};
    std::thread thread;

    ~Heartbeat() {
        stop = true;
        if (thread.joinable()) thread.join();
    }
};

struct Group {
    c10::intrusive_ptr<c10d::Store> store;
    c10::intrusive_ptr<c10d::Backend> backend;
    std::chrono::milliseconds timeout;
    int world;
    // NCCL: collectives are ordered on the GPU's streams, and the host does not wait for them.
    bool nccl;
    std::unique_ptr<Heartbeat> heartbeat;
};

// A store client (or, for rank 0 without a launcher's store, the server) under `prefix`.
c10::intrusive_ptr<c10d::Store> connect(const std::string &host, int port, bool server, int world,
                                        bool wait, std::chrono::milliseconds timeout,
                                        const std::string &prefix) {
    c10d::TCPStoreOptions options;
    options.port = static_cast<uint16_t>(port);
    options.isServer = server;
    // Every rank's client counts itself in; the server waits for all (as torch's env:// does).
    options.numWorkers = static_cast<size_t>(world);
    options.waitWorkers = wait;
    options.timeout = timeout;
    c10::intrusive_ptr<c10d::Store> store = c10::make_intrusive<c10d::TCPStore>(host, options);
    if (!prefix.empty()) store = c10::make_intrusive<c10d::PrefixStore>(prefix, store);
    return store;
}

// The local interface Gloo's pairs listen on, chosen as torch's Gloo backend chooses it:
// `GLOO_SOCKET_IFNAME` when set, else the address this host's name resolves to. A job whose
// master is on the loopback address runs on this host alone and stays on the loopback. (The
// master's own address is bindable on the master's host only.)
std::shared_ptr<::gloo::transport::Device> local_device(const std::string &master) {
    if (const char *names = std::getenv("GLOO_SOCKET_IFNAME"); names && *names) {
        std::string first(names);
        first = first.substr(0, first.find(','));
        return c10d::ProcessGroupGloo::createDeviceForInterface(first);
    }
    if (master == "localhost" || master.rfind("127.", 0) == 0 || master == "::1")
        return c10d::ProcessGroupGloo::createDeviceForHostname(master);
    return c10d::ProcessGroupGloo::createDefaultDevice();
}

// A Gloo process group over `store`, its pairs on this host's interface (see `local_device`).
c10::intrusive_ptr<c10d::Backend> gloo_backend(const c10::intrusive_ptr<c10d::Store> &store,
                                               int rank, int world,
                                               std::chrono::milliseconds timeout,
                                               const std::string &master) {
    auto options = c10d::ProcessGroupGloo::Options::create(timeout);
    options->devices.push_back(local_device(master));
    return c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, options);
}

// An NCCL process group over `store` (its keys under `nccl/`), bound to CUDA device `device`,
// its communicator made now rather than at the first collective, so that a rendezvous problem
// shows here.
c10::intrusive_ptr<c10d::Backend> nccl_backend(const c10::intrusive_ptr<c10d::Store> &store,
                                               int rank, int world,
                                               std::chrono::milliseconds timeout, int device) {
#ifdef LLAVA_NCCL
    auto options = c10d::ProcessGroupNCCL::Options::create();
    options->timeout = timeout;
    auto prefixed = c10::make_intrusive<c10d::PrefixStore>("nccl", store);
    auto backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(prefixed, rank, world, options);
    at::Device bound(at::kCUDA, static_cast<c10::DeviceIndex>(device));
    backend->setBoundDeviceId(bound);
    backend->eagerConnectSingleDevice(bound);
    return backend;
#else
    (void)store, (void)rank, (void)world, (void)timeout, (void)device;
    TORCH_CHECK(false,
                "this build has no NCCL (it was compiled without the CUDA runtime's and NCCL's "
                "headers); set LLAVA_DIST_BACKEND=gloo to go through host memory");
#endif
}

std::string heartbeat_key(int rank) { return "llava/heartbeat/" + std::to_string(rank); }

c10d::ReduceOp reduce_op(int op) {
    switch (op) {
        case 0: return c10d::ReduceOp(c10d::ReduceOp::SUM);
        case 1: return c10d::ReduceOp(c10d::ReduceOp::AVG);
        case 2: return c10d::ReduceOp(c10d::ReduceOp::MAX);
        case 3: return c10d::ReduceOp(c10d::ReduceOp::MIN);
        default: TORCH_CHECK(false, "unknown reduce op ", op);
    }
}

// Gloo: the host waits for the collective, up to the group's timeout. NCCL: the current CUDA
// stream waits for NCCL's, and the host goes on queueing work (a timeout given to an NCCL
// `wait` would block the host until the collective ran); NCCL's watchdog enforces the timeout.
void wait(Group *g, const c10::intrusive_ptr<c10d::Work> &work) {
    if (g->nccl)
        work->wait();
    else
        work->wait(g->timeout);
}

}  // namespace

extern "C" {

void llava_dist_free_message(char *message) { free(message); }

// Whether NCCL is compiled in.
int llava_dist_nccl_built(void) {
#ifdef LLAVA_NCCL
    return 1;
#else
    return 0;
#endif
}

// Joins a group of `world` ranks as `rank`: rank 0 serves a TCPStore on `host:port` (every rank
// connects to it), or, with `agent_store`, every rank is a client of the store a launcher already
// serves there (torchrun's), under `prefix`; then a process group is built over it, Gloo
// (`backend` 0) or NCCL on CUDA device `device` (`backend` 1), and the rank's heartbeat starts.
// Collectives and the store give up after `timeout_ms`.
char *llava_dist_open(const char *host, int port, int rank, int world, int64_t timeout_ms,
                      int agent_store, const char *prefix, int backend_kind, int device,
                      void **out) {
    return llava_ffi::guarded([&] {
        TORCH_CHECK(world >= 1 && rank >= 0 && rank < world, "rank ", rank, " of a world of ",
                    world);
        TORCH_CHECK(port > 0 && port < 65536, "port ", port);
        auto timeout = std::chrono::milliseconds(timeout_ms);
        std::string h(host), p(prefix);
        auto store = connect(h, port, !agent_store && rank == 0, world, true, timeout, p);
        TORCH_CHECK(backend_kind == 0 || backend_kind == 1, "unknown backend ", backend_kind);
        auto backend = backend_kind == 1 ? nccl_backend(store, rank, world, timeout, device)
                                         : gloo_backend(store, rank, world, timeout, h);
        auto heartbeat = std::make_unique<Heartbeat>();
        auto beats = connect(h, port, false, world, false, timeout, p);
        beats->add(heartbeat_key(rank), 1);
        heartbeat->thread = std::thread([beats, rank, stop = &heartbeat->stop] {
            while (!*stop) {
                try {
                    beats->add(heartbeat_key(rank), 1);
                } catch (...) {
                    // The store may be gone (whoever asks will find that out) or briefly
                    // unreachable: keep trying, so a live rank is never taken for a lost one.
                    for (int i = 0; i < 20 && !*stop; ++i)
                        std::this_thread::sleep_for(std::chrono::milliseconds(50));
                }
                for (int i = 0; i < 10 && !*stop; ++i)
                    std::this_thread::sleep_for(std::chrono::milliseconds(50));
            }
        });
        *out = new Group{store, backend, timeout, world, backend_kind == 1, std::move(heartbeat)};
    });
}

// Which ranks stopped beating: reads every rank's heartbeat, waits `wait_ms`, reads again.
// `lost[r]` becomes 1 for a rank whose count did not move. Fails when the store itself is
// unreachable (its host, rank 0 or the launcher, is gone).
char *llava_dist_lost_ranks(void *group, int64_t wait_ms, uint8_t *lost) {
    return llava_ffi::guarded([&] {
        auto *g = static_cast<Group *>(group);
        std::vector<int64_t> before(g->world);
        for (int r = 0; r < g->world; ++r) before[r] = g->store->add(heartbeat_key(r), 0);
        std::this_thread::sleep_for(std::chrono::milliseconds(wait_ms));
        for (int r = 0; r < g->world; ++r)
            lost[r] = g->store->add(heartbeat_key(r), 0) == before[r] ? 1 : 0;
    });
}

void llava_dist_close(void *group) { delete static_cast<Group *>(group); }

// In place: `tensor` becomes the reduction (0 sum, 1 average, 2 max, 3 min) over the ranks.
char *llava_dist_allreduce(void *group, at::Tensor *tensor, int op) {
    return llava_ffi::guarded([&] {
        auto *g = static_cast<Group *>(group);
        std::vector<at::Tensor> tensors{*tensor};
        c10d::AllreduceOptions options;
        options.reduceOp = reduce_op(op);
        options.timeout = g->timeout;
        wait(g, g->backend->allreduce(tensors, options));
    });
}

// `output` (1/world of `input`'s elements) becomes this rank's shard of the reduction of `input`.
char *llava_dist_reduce_scatter(void *group, at::Tensor *output, at::Tensor *input, int op) {
    return llava_ffi::guarded([&] {
        auto *g = static_cast<Group *>(group);
        c10d::ReduceScatterOptions options;
        options.reduceOp = reduce_op(op);
        options.timeout = g->timeout;
        wait(g, g->backend->_reduce_scatter_base(*output, *input, options));
    });
}

// `output` (world times `input`'s elements) becomes every rank's `input`, in rank order.
char *llava_dist_allgather(void *group, at::Tensor *output, at::Tensor *input) {
    return llava_ffi::guarded([&] {
        auto *g = static_cast<Group *>(group);
        c10d::AllgatherOptions options;
        options.timeout = g->timeout;
        wait(g, g->backend->_allgather_base(*output, *input, options));
    });
}

// In place: `tensor` becomes rank `root`'s.
char *llava_dist_broadcast(void *group, at::Tensor *tensor, int root) {
    return llava_ffi::guarded([&] {
        auto *g = static_cast<Group *>(group);
        std::vector<at::Tensor> tensors{*tensor};
        c10d::BroadcastOptions options;
        options.rootRank = root;
        options.timeout = g->timeout;
        wait(g, g->backend->broadcast(tensors, options));
    });
}

// Waits until every rank has called it.
char *llava_dist_barrier(void *group) {
    return llava_ffi::guarded([&] {
        auto *g = static_cast<Group *>(group);
        c10d::BarrierOptions options;
        options.timeout = g->timeout;
        wait(g, g->backend->barrier(options));
    });
}

// The store's key-value operations, for what the ranks must agree on besides tensors.
char *llava_dist_store_set(void *group, const char *key, const uint8_t *value, int64_t len) {
    return llava_ffi::guarded([&] {
        auto *g = static_cast<Group *>(group);
        g->store->set(std::string(key), std::vector<uint8_t>(value, value + len));
    });
}

// `*value` (malloc'd, free it with `llava_dist_free_message`) and `*len` become key's value,
// waiting for it up to the timeout.
char *llava_dist_store_get(void *group, const char *key, uint8_t **value, int64_t *len) {
    return llava_ffi::guarded([&] {
        auto *g = static_cast<Group *>(group);
        auto bytes = g->store->get(std::string(key));
        *len = static_cast<int64_t>(bytes.size());
        *value = static_cast<uint8_t *>(malloc(bytes.size() + 1));
        if (!bytes.empty()) std::memcpy(*value, bytes.data(), bytes.size());
    });
}

}  // extern "C"
