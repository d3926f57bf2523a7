//! libmemshadow.so
