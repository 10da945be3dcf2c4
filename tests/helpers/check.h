/* cmocka helpers shared by the integration tests. Include after <cmocka.h>. */
#ifndef PX_IT_CHECK_H
#define PX_IT_CHECK_H

/* Fails the current test with a formatted message when cond is false. */
#define CHECK(cond, ...)                       \
  do {                                         \
    if (!(cond)) {                             \
      print_error("FAILED: %s: ", #cond);      \
      print_error(__VA_ARGS__);                \
      print_error("\n");                       \
      fail();                                  \
    }                                          \
  } while (0)

#endif
