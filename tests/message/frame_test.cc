#include <gtest/gtest.h>

#include "zcrpc/frame.h"

TEST(Frame, Placeholder) { SUCCEED(); }
