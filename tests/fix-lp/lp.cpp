// A liquidity provider for fxcast's FIX tests, on QuickFIX (the C++ engine):
// a FIX 4.4 acceptor that streams quotes to subscribers and fills or rejects
// orders by a rule the test controls. QuickFIX runs the session layer, so it
// judges fxcast's: sequence numbers, resends, gap fills, heartbeats, logon.
//
// Usage: fix-lp PORT DIR DICTIONARY SENDER TARGET [USERNAME PASSWORD]
//   DICTIONARY is QuickFIX's FIX44.xml: with it QuickFIX validates every
//   message fxcast sends (required fields, types, repeating groups).
//   DIR holds QuickFIX's FileStore (sequence numbers and sent messages, so a
//   killed LP restarts its session intact), its logs and orders.txt (every
//   order it saw, so OrderStatusRequest answers survive a restart too).
//
// Commands on stdin, one per line:
//   price SYMBOL BID ASK     set the book of SYMBOL (and stream it)
//   mdreject SYMBOL TEXT     answer MarketDataRequests for SYMBOL with Y
//   mode fill                fill orders at the LP's price (default)
//   mode reject TEXT         reject every order with TEXT
//   mode hold                deal (fill) orders but hold the ExecutionReport
//   mode drop                lose orders: no deal, no report, no record (an
//                            OrderStatusRequest then finds no such order)
//   release                  send the held ExecutionReports
//   gap                      skip 3 outgoing sequence numbers and expect 2
//                            lower incoming ones: both sides must resend or
//                            gap fill
//   logout                   log the session out
// Lines on stdout (flushed): READY PORT, LOGON IN OUT (next expected
// incoming / next outgoing numbers), LOGOUT, ADMIN TYPE ..., V SYMBOL,
// D CLORDID COUNT, H CLORDID KNOWN, ER CLORDID STATUS, HELD CLORDID.

#include <quickfix/Application.h>
#include <quickfix/FileLog.h>
#include <quickfix/FileStore.h>
#include <quickfix/Message.h>
#include <quickfix/Session.h>
#include <quickfix/SessionSettings.h>
#include <quickfix/SocketAcceptor.h>
#include <quickfix/fix44/ExecutionReport.h>
#include <quickfix/fix44/MarketDataIncrementalRefresh.h>
#include <quickfix/fix44/MarketDataRequest.h>
#include <quickfix/fix44/MarketDataRequestReject.h>
#include <quickfix/fix44/MarketDataSnapshotFullRefresh.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

std::mutex out_mutex;
void say(const std::string& line) {
  std::lock_guard<std::mutex> lock(out_mutex);
  std::cout << line << std::endl;
}

std::string get(const FIX::FieldMap& m, int tag) {
  return m.isSetField(tag) ? m.getField(tag) : std::string();
}

struct Order {
  std::string status;  // "2" filled, "8" rejected
  std::string price, qty, side, symbol, exec_id, text;
  int count = 0;
};

class Lp : public FIX::Application {
 public:
  Lp(std::string dir, std::string user, std::string password)
      : dir_(std::move(dir)), user_(std::move(user)), password_(std::move(password)) {
    std::ifstream in(dir_ + "/orders.txt");
    std::string line;
    while (std::getline(in, line)) {
      std::istringstream s(line);
      std::string kind, id;
      s >> kind >> id;
      Order& o = orders_[id];
      if (kind == "D") {
        o.count++;
      } else if (kind == "S") {
        s >> o.status >> o.price >> o.qty >> o.side >> o.symbol >> o.exec_id;
        std::getline(s, o.text);
        if (!o.text.empty() && o.text[0] == ' ') o.text.erase(0, 1);
      }
    }
  }

  // --- commands -----------------------------------------------------------
  void command(const std::string& line) {
    std::istringstream s(line);
    std::string cmd;
    s >> cmd;
    std::vector<FIX::Message> out;
    if (cmd == "price") {
      std::string sym, bid, ask;
      s >> sym >> bid >> ask;
      std::lock_guard<std::mutex> lock(mutex_);
      book_[sym] = {bid, ask};
    } else if (cmd == "mdreject") {
      std::string sym, text;
      s >> sym;
      std::getline(s, text);
      std::lock_guard<std::mutex> lock(mutex_);
      md_reject_[sym] = text.empty() ? "rejected" : text.substr(1);
    } else if (cmd == "mode") {
      std::string mode, text;
      s >> mode;
      std::getline(s, text);
      std::lock_guard<std::mutex> lock(mutex_);
      mode_ = mode;
      reject_text_ = text.empty() ? "rejected" : text.substr(1);
    } else if (cmd == "release") {
      std::lock_guard<std::mutex> lock(mutex_);
      out.swap(held_);
    } else if (cmd == "gap") {
      FIX::Session* session = current();
      if (session) {
        session->setNextSenderMsgSeqNum(session->getExpectedSenderNum() + 3);
        session->setNextTargetMsgSeqNum(session->getExpectedTargetNum() - 2);
        say("GAP");
      }
    } else if (cmd == "logout") {
      FIX::Session* session = current();
      if (session) session->logout("the test asked for a logout");
    }
    send(out);
  }

  // Streams the book of every subscribed symbol.
  void stream() {
    std::vector<FIX::Message> out;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!logged_on_) return;
      for (const auto& sub : subscribed_) {
        const std::string& sym = sub.first;
        const std::string& req = sub.second;
        auto it = book_.find(sym);
        if (it == book_.end()) continue;
        FIX44::MarketDataIncrementalRefresh x;
        x.setField(FIX::MDReqID(req));
        for (int side = 0; side < 2; ++side) {
          FIX44::MarketDataIncrementalRefresh::NoMDEntries e;
          e.setField(FIX::MDUpdateAction('0'));
          e.setField(FIX::MDEntryType(side == 0 ? '0' : '1'));
          e.setField(FIX::Symbol(sym));
          e.setField(FIX::FIELD::MDEntryPx, side == 0 ? it->second.first : it->second.second);
          e.setField(FIX::FIELD::MDEntrySize, "1000000");
          x.addGroup(e);
        }
        out.push_back(x);
      }
    }
    send(out);
  }

  // --- QuickFIX callbacks ---------------------------------------------------
  void onCreate(const FIX::SessionID&) override {}
  void onLogon(const FIX::SessionID& id) override {
    FIX::Session* session = FIX::Session::lookupSession(id);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      session_ = id;
      logged_on_ = true;
      subscribed_.clear();
    }
    std::ostringstream line;
    line << "LOGON " << session->getExpectedTargetNum() << " " << session->getExpectedSenderNum();
    say(line.str());
  }
  void onLogout(const FIX::SessionID&) override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      logged_on_ = false;
    }
    say("LOGOUT");
  }
  void toAdmin(FIX::Message&, const FIX::SessionID&) override {}
  void toApp(FIX::Message&, const FIX::SessionID&) throw(FIX::DoNotSend) override {}

  void fromAdmin(const FIX::Message& m, const FIX::SessionID&) throw(FIX::FieldNotFound, FIX::IncorrectDataFormat,
                                                                   FIX::IncorrectTagValue, FIX::RejectLogon) override {
    const std::string type = m.getHeader().getField(FIX::FIELD::MsgType);
    if (type == "A" && !user_.empty()) {
      if (get(m, 553) != user_ || get(m, 554) != password_) {
        say("ADMIN A bad-credentials");
        throw FIX::RejectLogon("bad username or password");
      }
    }
    std::ostringstream line;
    line << "ADMIN " << type << " seq=" << m.getHeader().getField(FIX::FIELD::MsgSeqNum);
    if (type == "4") line << " gapfill=" << get(m, 123) << " new=" << get(m, 36);
    if (type == "2") line << " begin=" << get(m, 7) << " end=" << get(m, 16);
    say(line.str());
  }

  void fromApp(const FIX::Message& m, const FIX::SessionID&) throw(FIX::FieldNotFound, FIX::IncorrectDataFormat,
                                                                 FIX::IncorrectTagValue,
                                                                 FIX::UnsupportedMessageType) override {
    std::vector<FIX::Message> out;
    try {
      const std::string type = m.getHeader().getField(FIX::FIELD::MsgType);
      if (type == "V") {
        market_data_request(m, out);
      } else if (type == "D") {
        new_order(m, out);
      } else if (type == "H") {
        status_request(m, out);
      } else {
        say("APP " + type);
      }
    } catch (const std::exception& e) {
      say(std::string("ERROR ") + e.what());
    }
    send(out);
  }

 private:
  FIX::Session* current() {
    std::lock_guard<std::mutex> lock(mutex_);
    return logged_on_ ? FIX::Session::lookupSession(session_) : nullptr;
  }

  void send(std::vector<FIX::Message>& out) {
    FIX::SessionID id;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      id = session_;
    }
    for (auto& m : out) {
      try {
        FIX::Session::sendToTarget(m, id);
      } catch (const std::exception& e) {
        say(std::string("SENDFAIL ") + e.what());
      }
    }
  }

  void market_data_request(const FIX::Message& m, std::vector<FIX::Message>& out) {
    const std::string req = get(m, 262);
    std::string sym;
    if (m.groupCount(FIX::FIELD::NoRelatedSym) > 0) {
      FIX44::MarketDataRequest::NoRelatedSym group;
      m.getGroup(1, group);
      sym = get(group, FIX::FIELD::Symbol);
    }
    say("V " + sym);
    std::lock_guard<std::mutex> lock(mutex_);
    auto rejected = md_reject_.find(sym);
    if (rejected != md_reject_.end() || sym.empty()) {
      FIX44::MarketDataRequestReject y;
      y.setField(FIX::MDReqID(req));
      y.setField(FIX::MDReqRejReason('0'));
      y.setField(FIX::Text(rejected != md_reject_.end() ? rejected->second : "no symbol"));
      out.push_back(y);
      return;
    }
    subscribed_[sym] = req;
    auto it = book_.find(sym);
    if (it == book_.end()) return;
    FIX44::MarketDataSnapshotFullRefresh w;
    w.setField(FIX::MDReqID(req));
    w.setField(FIX::Symbol(sym));
    for (int side = 0; side < 2; ++side) {
      FIX44::MarketDataSnapshotFullRefresh::NoMDEntries e;
      e.setField(FIX::MDEntryType(side == 0 ? '0' : '1'));
      e.setField(FIX::FIELD::MDEntryPx, side == 0 ? it->second.first : it->second.second);
      e.setField(FIX::FIELD::MDEntrySize, "1000000");
      w.addGroup(e);
    }
    out.push_back(w);
  }

  void record(const std::string& line) {
    std::ofstream f(dir_ + "/orders.txt", std::ios::app);
    f << line << "\n";
  }

  FIX44::ExecutionReport report(const std::string& id, const Order& o, char exec_type) {
    const bool filled = o.status == "2";
    FIX44::ExecutionReport er(FIX::OrderID("LP-" + id), FIX::ExecID(o.exec_id + (exec_type == 'I' ? "-status" : "")),
                              FIX::ExecType(exec_type), FIX::OrdStatus(o.status[0]),
                              FIX::Side(o.side.empty() ? '1' : o.side[0]), FIX::LeavesQty(0),
                              FIX::CumQty(0), FIX::AvgPx(0));
    er.setField(FIX::ClOrdID(id));
    if (!o.symbol.empty()) er.setField(FIX::Symbol(o.symbol));
    if (filled) {
      er.setField(FIX::FIELD::CumQty, o.qty);
      er.setField(FIX::FIELD::AvgPx, o.price);
      er.setField(FIX::FIELD::LastPx, o.price);
      er.setField(FIX::FIELD::LastQty, o.qty);
    } else {
      er.setField(FIX::Text(o.text));
      if (o.status == "8") er.setField(FIX::OrdRejReason(o.text == "Unknown order" ? 5 : 0));
    }
    return er;
  }

  void new_order(const FIX::Message& m, std::vector<FIX::Message>& out) {
    const std::string id = get(m, 11);
    std::lock_guard<std::mutex> lock(mutex_);
    Order& o = orders_[id];
    o.count++;
    record("D " + id);
    say("D " + id + " " + std::to_string(o.count));
    if (mode_ == "drop" && o.status.empty()) {
      say("DROPPED " + id);
      return;
    }
    if (o.count > 1) {
      // Never deal a ClOrdID twice: repeat the first outcome.
      out.push_back(report(id, o, o.status == "2" ? 'F' : '8'));
      return;
    }
    o.side = get(m, 54);
    o.symbol = get(m, 55);
    o.qty = get(m, 38);
    o.exec_id = "EX" + std::to_string(++exec_seq_) + "-" + id;
    const std::string limit = get(m, 44);
    if (mode_ == "reject") {
      o.status = "8";
      o.text = reject_text_;
    } else {
      auto it = book_.find(o.symbol);
      if (it == book_.end()) {
        o.status = "8";
        o.text = "no price for " + o.symbol;
      } else {
        const std::string px = o.side == "1" ? it->second.second : it->second.first;
        const bool ok = limit.empty() ||
                        (o.side == "1" ? std::stod(px) <= std::stod(limit) : std::stod(px) >= std::stod(limit));
        if (ok) {
          o.status = "2";
          o.price = px;
        } else {
          o.status = "8";
          o.text = "price moved: " + px + " is through the limit " + limit;
        }
      }
    }
    std::string text = o.text;
    record("S " + id + " " + o.status + " " + (o.price.empty() ? "-" : o.price) + " " + o.qty + " " + o.side +
           " " + o.symbol + " " + o.exec_id + " " + text);
    FIX44::ExecutionReport er = report(id, o, o.status == "2" ? 'F' : '8');
    if (mode_ == "hold") {
      held_.push_back(er);
      say("HELD " + id);
      return;
    }
    say("ER " + id + " " + o.status);
    out.push_back(er);
  }

  void status_request(const FIX::Message& m, std::vector<FIX::Message>& out) {
    const std::string id = get(m, 11);
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = orders_.find(id);
    const bool known = it != orders_.end() && !it->second.status.empty();
    say("H " + id + " " + (known ? "1" : "0"));
    if (known) {
      out.push_back(report(id, it->second, 'I'));
    } else {
      Order unknown;
      unknown.status = "8";
      unknown.text = "Unknown order";
      unknown.side = get(m, 54);
      unknown.symbol = get(m, 55);
      unknown.exec_id = "NONE";
      out.push_back(report(id, unknown, 'I'));
    }
  }

  std::string dir_, user_, password_;
  std::mutex mutex_;
  FIX::SessionID session_;
  bool logged_on_ = false;
  std::map<std::string, std::pair<std::string, std::string>> book_;
  std::map<std::string, std::string> subscribed_;  // symbol -> MDReqID
  std::map<std::string, std::string> md_reject_;
  std::map<std::string, Order> orders_;
  std::vector<FIX::Message> held_;
  std::string mode_ = "fill", reject_text_;
  long exec_seq_ = 0;
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 6 && argc != 8) {
    std::cerr << "usage: fix-lp PORT DIR DICTIONARY SENDER TARGET [USERNAME PASSWORD]\n";
    return 64;
  }
  const std::string port = argv[1], dir = argv[2], dictionary = argv[3], sender = argv[4], target = argv[5];
  std::ostringstream cfg;
  cfg << "[DEFAULT]\nConnectionType=acceptor\nSocketAcceptPort=" << port
      << "\nSocketReuseAddress=Y\nFileStorePath=" << dir << "/store\nFileLogPath=" << dir
      << "/log\nStartTime=00:00:00\nEndTime=00:00:00\nUseDataDictionary=Y\nDataDictionary=" << dictionary
      << "\nValidateUserDefinedFields=N\n"
         "ResetOnLogon=N\nResetOnLogout=N\nResetOnDisconnect=N\nPersistMessages=Y\n"
         "[SESSION]\nBeginString=FIX.4.4\nSenderCompID="
      << sender << "\nTargetCompID=" << target << "\n";
  try {
    std::istringstream in(cfg.str());
    FIX::SessionSettings settings(in);
    Lp lp(dir, argc == 8 ? argv[6] : "", argc == 8 ? argv[7] : "");
    FIX::FileStoreFactory store(settings);
    FIX::FileLogFactory log(settings);
    FIX::SocketAcceptor acceptor(lp, store, settings, log);
    try {
      acceptor.start();
    } catch (const std::exception& e) {
      say(std::string("BINDFAIL ") + e.what());
      return 2;
    }
    say("READY " + port);
    std::atomic<bool> running{true};
    std::thread ticker([&] {
      while (running) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        lp.stream();
      }
    });
    std::string line;
    while (std::getline(std::cin, line)) {
      if (!line.empty()) lp.command(line);
    }
    running = false;
    ticker.join();
    acceptor.stop();
  } catch (const std::exception& e) {
    std::cerr << "fix-lp: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
