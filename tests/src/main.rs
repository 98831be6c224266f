mod spec_files;
