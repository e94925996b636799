// A C ABI over PyTorch c10d's TCPStore and ProcessGroupGloo, the collectives the torch wheel ships (and the
// ones torchrun-launched PyTorch programs use on CPU). tch binds ATen but not c10d; this file is the only
// C++ in mimo and does nothing but forward calls and turn C++ exceptions into messages.
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

namespace {
char* dup(const std::string& s) {
  char* p = static_cast<char*>(std::malloc(s.size() + 1));
  std::memcpy(p, s.c_str(), s.size() + 1);
  return p;
}

template <typename F>
int guarded(char** err, F f) {
  try {
    f();
    return 0;
  } catch (const c10::Error& e) {
    *err = dup(e.what_without_backtrace());
  } catch (const std::exception& e) {
    *err = dup(e.what());
  } catch (...) {
    *err = dup("unknown C++ exception");
  }
  return 1;
}
}  // namespace

struct mimo_pg {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;
};

extern "C" {

// Rendezvous at host:port (rank 0 serves the store) and build the gloo group. `iface` (may be empty) picks
// the network interface, as GLOO_SOCKET_IFNAME does for PyTorch.
mimo_pg* mimo_pg_new(const char* host, int port, int rank, int world, int timeout_ms, const char* iface,
                     char** err) {
  mimo_pg* out = nullptr;
  guarded(err, [&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions so;
    so.port = static_cast<std::uint16_t>(port);
    so.isServer = rank == 0;
    so.numWorkers = world;
    so.waitWorkers = true;
    so.timeout = timeout;
    auto store = c10::make_intrusive<c10d::TCPStore>(std::string(host), so);
    auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
    std::string ifname(iface);
    opts->devices.push_back(ifname.empty() ? c10d::ProcessGroupGloo::createDefaultDevice()
                                           : c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
    opts->threads = 1;
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, opts);
    out = new mimo_pg{store, pg};
  });
  return out;
}

void mimo_pg_free(mimo_pg* g) { delete g; }

void mimo_free_str(char* s) { std::free(s); }

// In-place sum of each tensor over the ranks (one gloo allreduce per tensor, in order).
int mimo_pg_allreduce_sum(mimo_pg* g, at::Tensor** ts, int n, char** err) {
  return guarded(err, [&] {
    for (int i = 0; i < n; ++i) {
      std::vector<at::Tensor> v{*ts[i]};
      g->pg->allreduce(v, c10d::AllreduceOptions{})->wait();
    }
  });
}

// In-place broadcast of a tensor from `root`.
int mimo_pg_broadcast(mimo_pg* g, at::Tensor* t, int root, char** err) {
  return guarded(err, [&] {
    std::vector<at::Tensor> v{*t};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    g->pg->broadcast(v, o)->wait();
  });
}

int mimo_pg_barrier(mimo_pg* g, char** err) {
  return guarded(err, [&] { g->pg->barrier(c10d::BarrierOptions{})->wait(); });
}
}
